//! Why a Sigma document could not be loaded.

/// One reason a Sigma rule or correlation was rejected. A rejected document is skipped and listed
/// in the [`LoadReport`](super::LoadReport); it never stops the rest of the load.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("cannot read the file: {0}")]
    Unreadable(String),
    #[error("the file is larger than {0} bytes")]
    TooLarge(u64),
    #[error("YAML is malformed: {0}")]
    Yaml(String),
    #[error("the document is not a YAML mapping")]
    NotAMapping,
    #[error("the required key `{0}` is missing")]
    MissingKey(&'static str),
    #[error("key `{key}` is invalid: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("Sigma filter documents are not supported (filters must be merged into the rule)")]
    FilterDocument,
    #[error("log source not produced by QSC: {0}")]
    UnsupportedLogsource(String),
    #[error("field `{0}` is not a Sigma field QSC knows")]
    UnknownField(String),
    #[error("field `{0}` is a Sigma field that QSC events do not carry")]
    FieldUnavailable(String),
    #[error("modifier `{modifier}` on `{field}` is unknown")]
    UnknownModifier { field: String, modifier: String },
    #[error("modifier `{modifier}` on `{field}` is not supported: {reason}")]
    UnsupportedModifier {
        field: String,
        modifier: String,
        reason: &'static str,
    },
    #[error("value for `{field}` is invalid: {reason}")]
    InvalidValue { field: String, reason: String },
    #[error("search identifier `{name}` is invalid: {reason}")]
    InvalidSearch { name: String, reason: String },
    #[error("condition `{condition}` is invalid: {reason}")]
    Condition { condition: String, reason: String },
    #[error("rule id `{0}` is defined twice")]
    DuplicateId(String),
    #[error(
        "correlation type `{0}` is not supported (event_count, value_count, temporal, temporal_ordered are)"
    )]
    UnsupportedCorrelationType(String),
    #[error("correlation refers to `{0}`, which is not a loaded rule name or id")]
    UnknownRuleReference(String),
    #[error("correlation condition is not supported: {0}")]
    UnsupportedCorrelationCondition(String),
    #[error("correlations form a cycle through `{0}`")]
    CorrelationCycle(String),
}

impl RuleError {
    /// A short class name, for summarising many skips.
    pub fn label(&self) -> &'static str {
        match self {
            RuleError::Unreadable(_) => "unreadable",
            RuleError::TooLarge(_) => "too_large",
            RuleError::Yaml(_) => "yaml",
            RuleError::NotAMapping => "not_a_mapping",
            RuleError::MissingKey(_) => "missing_key",
            RuleError::InvalidKey { .. } => "invalid_key",
            RuleError::FilterDocument => "filter_document",
            RuleError::UnsupportedLogsource(_) => "unsupported_logsource",
            RuleError::UnknownField(_) => "unknown_field",
            RuleError::FieldUnavailable(_) => "field_unavailable",
            RuleError::UnknownModifier { .. } => "unknown_modifier",
            RuleError::UnsupportedModifier { .. } => "unsupported_modifier",
            RuleError::InvalidValue { .. } => "invalid_value",
            RuleError::InvalidSearch { .. } => "invalid_search",
            RuleError::Condition { .. } => "condition",
            RuleError::DuplicateId(_) => "duplicate_id",
            RuleError::UnsupportedCorrelationType(_) => "unsupported_correlation_type",
            RuleError::UnknownRuleReference(_) => "unknown_rule_reference",
            RuleError::UnsupportedCorrelationCondition(_) => "unsupported_correlation_condition",
            RuleError::CorrelationCycle(_) => "correlation_cycle",
        }
    }
}
