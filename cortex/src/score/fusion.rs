//! Bayesian fusion of evidence per entity.
//!
//! For each entity the posterior log-odds are
//!
//! ```text
//! ln(prior / (1 - prior)) + Σ over distinct rules r:  ln(LR_r) × 2^(-(now - t_r) / half_life)
//! ```
//!
//! where `t_r` is the time of rule `r`'s latest hit on that entity. A rule's repeats are folded
//! into its one piece of evidence (latest time, largest LR, hit count, event refs), so a burst of
//! one rule never multiplies. The confidence is the posterior probability
//! `odds / (1 + odds)`. Decay weakens old evidence smoothly; evidence older than `max_age_s`
//! is dropped.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::classify::classify;
use super::config::{ScoreConfig, ScoreConfigError};
use super::hit::{AnomalyScore, EntityKey, EventRef, Level, RuleHit, SourceKind};
use super::incident::{Evidence, Incident, IncidentStatus, Severity, attack_techniques};

/// Rule id under which anomaly scores are kept as evidence.
pub const ANOMALY_RULE_ID: &str = "qsc.anomaly.host_baseline";
/// Event refs kept per piece of evidence (the most recent ones).
const MAX_EVENT_REFS: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error(transparent)]
    Config(#[from] ScoreConfigError),
    #[error("rule `{rule_id}` has likelihood ratio {value}; it must be a finite number above 0")]
    InvalidLikelihoodRatio { rule_id: String, value: f64 },
    #[error("rule hit `{rule_id}` names no host")]
    MissingHost { rule_id: String },
    #[error("anomaly score {value} for host `{host}` is outside 0..=1")]
    InvalidAnomalyScore { host: String, value: f64 },
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

/// The current posterior of one entity.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    pub entity: EntityKey,
    pub prior: f64,
    pub log_odds: f64,
    pub confidence: f64,
    pub severity: Option<Severity>,
    /// Strongest contribution first.
    pub evidence: Vec<Evidence>,
}

/// One rule's folded hits on one entity.
#[derive(Clone, Debug)]
struct Contribution {
    title: String,
    source: SourceKind,
    level: Option<Level>,
    tags: Vec<String>,
    lr: f64,
    hits: u64,
    event_refs: VecDeque<EventRef>,
    host: String,
    first_seen_ns: u64,
    time_ns: u64,
}

#[derive(Clone, Debug)]
struct OpenIncident {
    id: String,
    opened_ns: u64,
}

#[derive(Clone, Debug, Default)]
struct EntityState {
    contributions: BTreeMap<String, Contribution>,
    /// Latest evidence time seen for this entity: the "now" its decay is computed at.
    latest_ns: u64,
    incident: Option<OpenIncident>,
}

/// The fusion engine: one posterior per entity, incidents for entities above the LOW threshold.
pub struct Fusion {
    config: ScoreConfig,
    entities: HashMap<EntityKey, EntityState>,
}

impl Fusion {
    pub fn new(config: ScoreConfig) -> Result<Self, ScoreError> {
        config.validate()?;
        Ok(Fusion {
            config,
            entities: HashMap::new(),
        })
    }

    pub fn config(&self) -> &ScoreConfig {
        &self.config
    }

    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// The likelihood ratio used for a hit: config override, else the rule's own, else its level's.
    pub fn likelihood_ratio(&self, hit: &RuleHit) -> Result<f64, ScoreError> {
        let lr = self
            .config
            .rule_lr
            .get(&hit.rule_id)
            .copied()
            .or(hit.likelihood_ratio)
            .unwrap_or_else(|| self.config.level_lr.for_level(hit.level));
        if lr.is_finite() && lr > 0.0 {
            Ok(lr)
        } else {
            Err(ScoreError::InvalidLikelihoodRatio {
                rule_id: hit.rule_id.clone(),
                value: lr,
            })
        }
    }

    /// Folds a rule hit into every entity it names, and returns the incident of the entity that
    /// is now most likely under attack, when that entity is at or above the LOW threshold.
    pub fn observe_hit(&mut self, hit: &RuleHit) -> Result<Option<Incident>, ScoreError> {
        if hit.entities.host.is_empty() {
            return Err(ScoreError::MissingHost {
                rule_id: hit.rule_id.clone(),
            });
        }
        let lr = self.likelihood_ratio(hit)?;
        let keys = hit.entities.keys();
        for key in &keys {
            let state = self.entity_mut(key, hit.time_ns);
            fold_rule_hit(state, hit, lr);
        }
        self.report(&keys)
    }

    /// Folds an anomaly score into the host entity (the most recent score replaces the previous).
    pub fn observe_anomaly(
        &mut self,
        anomaly: &AnomalyScore,
    ) -> Result<Option<Incident>, ScoreError> {
        if !(0.0..=1.0).contains(&anomaly.score) {
            return Err(ScoreError::InvalidAnomalyScore {
                host: anomaly.host.clone(),
                value: anomaly.score,
            });
        }
        if anomaly.score < self.config.anomaly_min_score {
            return Ok(None);
        }
        let lr = self.config.anomaly_max_lr.powf(anomaly.score);
        let key = EntityKey::Host {
            host: anomaly.host.clone(),
        };
        let state = self.entity_mut(&key, anomaly.time_ns);
        let first_seen_ns = state
            .contributions
            .get(ANOMALY_RULE_ID)
            .map_or(anomaly.time_ns, |c| c.first_seen_ns);
        let hits = state
            .contributions
            .get(ANOMALY_RULE_ID)
            .map_or(0, |c| c.hits);
        state.contributions.insert(
            ANOMALY_RULE_ID.to_owned(),
            Contribution {
                title: format!(
                    "host anomaly score {:.2}: {}",
                    anomaly.score, anomaly.detail
                ),
                source: SourceKind::Anomaly,
                level: None,
                tags: Vec::new(),
                lr,
                hits: hits + 1,
                event_refs: VecDeque::new(),
                host: anomaly.host.clone(),
                first_seen_ns,
                time_ns: anomaly.time_ns,
            },
        );
        self.report(&[key])
    }

    /// The entity's posterior at its latest evidence time; `None` for an unknown entity.
    pub fn assess(&self, entity: &EntityKey) -> Option<Assessment> {
        let state = self.entities.get(entity)?;
        Some(self.assess_state(entity, state, state.latest_ns))
    }

    /// Marks an incident resolved by an operator and forgets its entity's evidence, so that new
    /// evidence opens a new incident. Returns false for an unknown or already resolved incident.
    pub fn resolve(&mut self, incident_id: &str) -> bool {
        let Some(state) = self
            .entities
            .values_mut()
            .find(|s| s.incident.as_ref().is_some_and(|i| i.id == incident_id))
        else {
            return false;
        };
        state.contributions.clear();
        state.incident = None;
        true
    }

    /// Takes back an incident that is not resolved, as stored by the worker that owned its
    /// host before (scale-out: a partition moved from a dead worker): its entity keeps its
    /// incident id and every piece of evidence (LR, hit count, times, event refs), so later
    /// evidence updates the same incident and a replayed hit is recognised as a repeat.
    pub fn restore(&mut self, incident: &Incident) {
        if incident.status == IncidentStatus::Resolved {
            return;
        }
        let state = self.entity_mut(&incident.entity, incident.updated_ns);
        state.incident = Some(OpenIncident {
            id: incident.id.clone(),
            opened_ns: incident.opened_ns,
        });
        for evidence in &incident.evidence {
            state.contributions.insert(
                evidence.rule_id.clone(),
                Contribution {
                    title: evidence.title.clone(),
                    source: evidence.source,
                    level: evidence.level,
                    tags: evidence.tags.clone(),
                    lr: evidence.lr,
                    hits: evidence.hits,
                    event_refs: evidence.event_refs.iter().cloned().collect(),
                    host: incident.host.clone(),
                    first_seen_ns: evidence.first_seen_ns,
                    time_ns: evidence.time_ns,
                },
            );
        }
    }

    /// Drops evidence older than `max_age_s` at `now_ns`, and entities left with none and no open
    /// incident. Returns how many entities were dropped.
    pub fn prune(&mut self, now_ns: u64) -> usize {
        let max_age_ns = seconds_to_ns(self.config.max_age_s);
        let before = self.entities.len();
        self.entities.retain(|_, state| {
            state
                .contributions
                .retain(|_, c| now_ns.saturating_sub(c.time_ns) <= max_age_ns);
            !state.contributions.is_empty() || state.incident.is_some()
        });
        before - self.entities.len()
    }

    fn entity_mut(&mut self, key: &EntityKey, time_ns: u64) -> &mut EntityState {
        if !self.entities.contains_key(key) && self.entities.len() >= self.config.max_entities {
            self.evict_least_recent();
        }
        let max_age_ns = seconds_to_ns(self.config.max_age_s);
        let state = self.entities.entry(key.clone()).or_default();
        state.latest_ns = state.latest_ns.max(time_ns);
        let now = state.latest_ns;
        state
            .contributions
            .retain(|_, c| now.saturating_sub(c.time_ns) <= max_age_ns);
        state
    }

    fn evict_least_recent(&mut self) {
        let oldest = self
            .entities
            .iter()
            .min_by_key(|(_, s)| s.latest_ns)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            tracing::warn!(entity = %key, "score: entity table full, dropping the least recently updated entity");
            self.entities.remove(&key);
        }
    }

    fn report(&mut self, keys: &[EntityKey]) -> Result<Option<Incident>, ScoreError> {
        let best =
            keys.iter()
                .filter_map(|key| self.assess(key))
                .fold(None::<Assessment>, |best, a| match best {
                    Some(b) if b.log_odds >= a.log_odds => Some(b),
                    _ => Some(a),
                });
        let Some(assessment) = best else {
            return Ok(None);
        };
        let Some(severity) = assessment.severity else {
            return Ok(None);
        };
        let Some(state) = self.entities.get_mut(&assessment.entity) else {
            return Ok(None);
        };
        let open = match &state.incident {
            Some(open) => open.clone(),
            None => {
                let open = OpenIncident {
                    id: new_incident_id()?,
                    opened_ns: state.latest_ns,
                };
                state.incident = Some(open.clone());
                open
            }
        };
        let host = incident_host(&assessment.entity, state);
        let tags = assessment.evidence.iter().flat_map(|e| e.tags.iter());
        Ok(Some(Incident {
            id: open.id,
            host,
            entity: assessment.entity.clone(),
            title: classify(&assessment.evidence),
            severity,
            confidence: assessment.confidence,
            prior: assessment.prior,
            log_odds: assessment.log_odds,
            attack_techniques: attack_techniques(tags),
            status: IncidentStatus::Open,
            opened_ns: open.opened_ns,
            updated_ns: state.latest_ns,
            evidence: assessment.evidence,
        }))
    }

    fn assess_state(&self, entity: &EntityKey, state: &EntityState, now_ns: u64) -> Assessment {
        let prior = self.prior_for(entity);
        let half_life_ns = seconds_to_ns(self.config.half_life_s) as f64;
        let mut evidence: Vec<Evidence> = state
            .contributions
            .iter()
            .map(|(rule_id, c)| {
                let age_ns = now_ns.saturating_sub(c.time_ns) as f64;
                let decay = (-age_ns / half_life_ns).exp2();
                Evidence {
                    rule_id: rule_id.clone(),
                    title: c.title.clone(),
                    source: c.source,
                    level: c.level,
                    tags: c.tags.clone(),
                    lr: c.lr,
                    contribution: c.lr.ln() * decay,
                    hits: c.hits,
                    event_refs: c.event_refs.iter().cloned().collect(),
                    first_seen_ns: c.first_seen_ns,
                    time_ns: c.time_ns,
                }
            })
            .collect();
        evidence.sort_by(|a, b| b.contribution.total_cmp(&a.contribution));
        let log_odds =
            (prior / (1.0 - prior)).ln() + evidence.iter().map(|e| e.contribution).sum::<f64>();
        let confidence = 1.0 / (1.0 + (-log_odds).exp());
        Assessment {
            entity: entity.clone(),
            prior,
            log_odds,
            confidence,
            severity: Severity::from_confidence(confidence, &self.config.thresholds),
            evidence,
        }
    }

    /// Host-bound entities take their host's class prior; remote addresses the default class's.
    fn prior_for(&self, entity: &EntityKey) -> f64 {
        self.config.prior_for_host(entity.host())
    }
}

/// Folds a hit into its rule's evidence. A hit whose supporting events are all in the evidence
/// already is the same hit seen again (detection re-run on events after a worker died before
/// recording its progress) and changes nothing.
fn fold_rule_hit(state: &mut EntityState, hit: &RuleHit, lr: f64) {
    if let Some(known) = state.contributions.get(&hit.rule_id)
        && !hit.event_refs.is_empty()
        && hit.event_refs.iter().all(|r| known.event_refs.contains(r))
    {
        return;
    }
    let contribution = state
        .contributions
        .entry(hit.rule_id.clone())
        .or_insert_with(|| Contribution {
            title: hit.title.clone(),
            source: hit.source,
            level: Some(hit.level),
            tags: hit.tags.clone(),
            lr,
            hits: 0,
            event_refs: VecDeque::new(),
            host: hit.entities.host.clone(),
            first_seen_ns: hit.time_ns,
            time_ns: hit.time_ns,
        });
    contribution.hits += 1;
    contribution.lr = contribution.lr.max(lr);
    contribution.first_seen_ns = contribution.first_seen_ns.min(hit.time_ns);
    if hit.time_ns >= contribution.time_ns {
        contribution.time_ns = hit.time_ns;
        contribution.host = hit.entities.host.clone();
    }
    for event_ref in &hit.event_refs {
        if contribution.event_refs.len() == MAX_EVENT_REFS {
            contribution.event_refs.pop_front();
        }
        contribution.event_refs.push_back(event_ref.clone());
    }
}

fn incident_host(entity: &EntityKey, state: &EntityState) -> String {
    match entity.host() {
        Some(host) => host.to_owned(),
        None => state
            .contributions
            .values()
            .max_by_key(|c| c.time_ns)
            .map(|c| c.host.clone())
            .unwrap_or_default(),
    }
}

fn new_incident_id() -> Result<String, ScoreError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| ScoreError::Random(e.to_string()))?;
    Ok(format!("inc-{}", hex::encode(bytes)))
}

fn seconds_to_ns(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::hit::HitEntities;

    const T0: u64 = 1_700_000_000_000_000_000;
    const SECOND: u64 = 1_000_000_000;

    fn hit(rule_id: &str, level: Level, tags: &[&str], source: SourceKind, at_s: u64) -> RuleHit {
        RuleHit {
            rule_id: rule_id.into(),
            title: rule_id.into(),
            level,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            likelihood_ratio: None,
            source,
            entities: HitEntities {
                host: "web-01".into(),
                ..Default::default()
            },
            time_ns: T0 + at_s * SECOND,
            event_refs: vec![EventRef {
                host_id: "web-01".into(),
                seq: at_s + 1,
            }],
        }
    }

    fn host_key(host: &str) -> EntityKey {
        EntityKey::Host { host: host.into() }
    }

    /// `ln(lr) × 2^(-age/half_life)`, written out independently of the engine.
    fn decayed(lr: f64, age_s: f64, half_life_s: f64) -> f64 {
        lr.ln() * 0.5f64.powf(age_s / half_life_s)
    }

    /// The seed scenario: on web-01, 30 failed ssh logins for `deploy` from 203.0.113.7 within
    /// two minutes (each a hit of a low rule, plus one hit of the high-level burst correlation),
    /// then a successful login from that new address, a 4 GB outbound transfer by a process of
    /// that session to 198.51.100.20, and a corrupted backup, all within 4.5 minutes.
    ///
    /// With the default config (prior 0.001, half-life 30 min, LR low 3 / medium 8 / high 25),
    /// evaluated at the backup hit (t = 270 s):
    ///   ln(0.001/0.999)              = -6.907
    ///   auth failure ×30, once: (last at 116 s, age 154 s) ln 3 × 0.942 ≈ +1.035
    ///   burst (high, age 150 s)      ln 25 × 0.944 ≈ +3.038
    ///   new-address login (age 120)  ln 8  × 0.955 ≈ +1.985
    ///   large outbound (age 30)      ln 25 × 0.989 ≈ +3.182
    ///   backup corrupt (age 0)       ln 25         = +3.219
    ///   posterior log-odds ≈ 5.55 → confidence ≈ 0.996 ≥ 0.95 → CRITICAL.
    /// Had the 30 failures counted as independent evidence they would add 30 × ln 3 ≈ 33 and the
    /// confidence would say nothing; folded, they add one ln 3.
    #[test]
    fn seed_scenario_is_one_critical_credential_stuffing_exfiltration_incident() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let attacker: std::net::IpAddr = "203.0.113.7".parse().unwrap();
        let mut incidents = Vec::new();
        for i in 0..30u64 {
            let mut failure = hit(
                "qsc.auth.ssh_failure",
                Level::Low,
                &["attack.credential_access", "attack.t1110"],
                SourceKind::Auth,
                i * 4,
            );
            failure.entities.user = Some("deploy".into());
            failure.entities.remote_ip = Some(attacker);
            incidents.extend(fusion.observe_hit(&failure).unwrap());
        }
        let mut burst = hit(
            "qsc.auth.credential_stuffing_burst",
            Level::High,
            &["attack.credential_access", "attack.t1110.004"],
            SourceKind::Auth,
            120,
        );
        burst.entities.remote_ip = Some(attacker);
        let mut login = hit(
            "qsc.auth.login_from_new_address",
            Level::Medium,
            &["attack.initial_access", "attack.t1078"],
            SourceKind::Auth,
            150,
        );
        login.entities.user = Some("deploy".into());
        login.entities.remote_ip = Some(attacker);
        let mut outbound = hit(
            "qsc.net.large_outbound_transfer",
            Level::High,
            &["attack.exfiltration", "attack.t1048"],
            SourceKind::Network,
            240,
        );
        outbound.entities.user = Some("deploy".into());
        outbound.entities.lineage_root = Some("guid-sshd-session".into());
        outbound.entities.remote_ip = Some("198.51.100.20".parse().unwrap());
        let backup = hit(
            "qsc.integrity.backup_corrupt",
            Level::High,
            &["attack.impact", "attack.t1490"],
            SourceKind::Integrity,
            270,
        );
        for h in [&burst, &login, &outbound, &backup] {
            incidents.extend(fusion.observe_hit(h).unwrap());
        }

        let last = incidents.last().unwrap();
        // One incident: every report after the first carries the same id.
        assert!(incidents.iter().all(|i| i.id == last.id));
        assert_eq!(last.entity, host_key("web-01"));
        assert_eq!(last.host, "web-01");
        assert_eq!(last.title, "credential stuffing + exfiltration");
        assert_eq!(last.severity, Severity::Critical);
        assert_eq!(last.status, IncidentStatus::Open);

        let h = 1800.0;
        let expected_log_odds = (0.001f64 / 0.999).ln()
            + decayed(3.0, 270.0 - 116.0, h)
            + decayed(25.0, 150.0, h)
            + decayed(8.0, 120.0, h)
            + decayed(25.0, 30.0, h)
            + decayed(25.0, 0.0, h);
        let expected_confidence = 1.0 / (1.0 + (-expected_log_odds).exp());
        assert!((last.log_odds - expected_log_odds).abs() < 1e-9);
        assert!((last.confidence - expected_confidence).abs() < 1e-12);
        assert!(
            (0.995..0.997).contains(&last.confidence),
            "{}",
            last.confidence
        );
        assert_eq!(last.prior, 0.001);

        assert_eq!(last.evidence.len(), 5);
        assert_eq!(last.evidence[0].rule_id, "qsc.integrity.backup_corrupt");
        let failures = last
            .evidence
            .iter()
            .find(|e| e.rule_id == "qsc.auth.ssh_failure")
            .unwrap();
        assert_eq!(failures.hits, 30);
        assert_eq!(failures.lr, 3.0);
        assert_eq!(failures.event_refs.len(), 30);
        let sum: f64 = last.evidence.iter().map(|e| e.contribution).sum();
        assert!((last.log_odds - (0.001f64 / 0.999).ln() - sum).abs() < 1e-9);
        assert_eq!(
            last.attack_techniques,
            vec!["T1048", "T1078", "T1110", "T1110.004", "T1490"]
        );

        // The severity climbed as the evidence arrived: before the backup hit it was HIGH.
        let before_backup = &incidents[incidents.len() - 2];
        assert_eq!(before_backup.severity, Severity::High);
        assert_eq!(before_backup.title, "credential stuffing + exfiltration");
    }

    /// The last of the repeats in `repeats_of_one_rule_do_not_multiply`.
    fn many_last(h: &RuleHit) -> RuleHit {
        RuleHit {
            event_refs: vec![EventRef {
                host_id: "web-01".into(),
                seq: 1099,
            }],
            ..h.clone()
        }
    }

    #[test]
    fn repeats_of_one_rule_do_not_multiply() {
        let mut once = Fusion::new(ScoreConfig::default()).unwrap();
        let mut many = Fusion::new(ScoreConfig::default()).unwrap();
        let h = hit("r", Level::Critical, &[], SourceKind::Process, 10);
        once.observe_hit(&h).unwrap();
        for seq in 0..100 {
            let repeat = RuleHit {
                event_refs: vec![EventRef {
                    host_id: "web-01".into(),
                    seq: 1000 + seq,
                }],
                ..h.clone()
            };
            many.observe_hit(&repeat).unwrap();
        }
        let a = once.assess(&host_key("web-01")).unwrap();
        let b = many.assess(&host_key("web-01")).unwrap();
        assert_eq!(a.log_odds, b.log_odds);
        assert_eq!(b.evidence[0].hits, 100);
        // The same hit seen again (the same events: detection re-run) is no repeat at all.
        many.observe_hit(&many_last(&h)).unwrap();
        assert_eq!(
            many.assess(&host_key("web-01")).unwrap().evidence[0].hits,
            100
        );
    }

    #[test]
    fn evidence_decays_with_its_half_life_and_expires() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        fusion
            .observe_hit(&hit("old", Level::High, &[], SourceKind::Process, 0))
            .unwrap();
        fusion
            .observe_hit(&hit(
                "new",
                Level::Informational,
                &[],
                SourceKind::Process,
                1800,
            ))
            .unwrap();
        let assessment = fusion.assess(&host_key("web-01")).unwrap();
        let old = assessment
            .evidence
            .iter()
            .find(|e| e.rule_id == "old")
            .unwrap();
        assert!((old.contribution - 25f64.ln() / 2.0).abs() < 1e-12);

        fusion
            .observe_hit(&hit("late", Level::Low, &[], SourceKind::Process, 7 * 3600))
            .unwrap();
        let assessment = fusion.assess(&host_key("web-01")).unwrap();
        let rules: Vec<&str> = assessment
            .evidence
            .iter()
            .map(|e| e.rule_id.as_str())
            .collect();
        assert_eq!(rules, vec!["late"]);
        assert_eq!(fusion.prune(T0 + 14 * 3600 * SECOND), 1);
        assert_eq!(fusion.entity_count(), 0);
    }

    #[test]
    fn likelihood_ratio_precedence_is_config_then_rule_then_level() {
        let mut config = ScoreConfig::default();
        config.rule_lr.insert("tuned".into(), 2.0);
        let fusion = Fusion::new(config).unwrap();
        let mut h = hit("tuned", Level::High, &[], SourceKind::Process, 0);
        h.likelihood_ratio = Some(50.0);
        assert_eq!(fusion.likelihood_ratio(&h).unwrap(), 2.0);
        h.rule_id = "own".into();
        assert_eq!(fusion.likelihood_ratio(&h).unwrap(), 50.0);
        h.likelihood_ratio = None;
        assert_eq!(fusion.likelihood_ratio(&h).unwrap(), 25.0);
        h.likelihood_ratio = Some(f64::INFINITY);
        assert!(matches!(
            fusion.likelihood_ratio(&h),
            Err(ScoreError::InvalidLikelihoodRatio { .. })
        ));
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let mut h = hit("r", Level::High, &[], SourceKind::Process, 0);
        h.entities.host.clear();
        assert!(matches!(
            fusion.observe_hit(&h),
            Err(ScoreError::MissingHost { .. })
        ));
        let anomaly = AnomalyScore {
            host: "web-01".into(),
            score: f64::NAN,
            time_ns: T0,
            detail: String::new(),
        };
        assert!(matches!(
            fusion.observe_anomaly(&anomaly),
            Err(ScoreError::InvalidAnomalyScore { .. })
        ));
        let config = ScoreConfig {
            half_life_s: 0.0,
            ..ScoreConfig::default()
        };
        assert!(matches!(Fusion::new(config), Err(ScoreError::Config(_))));
    }

    /// Process, network, integrity, certificate, auth and anomaly evidence all fuse into the host.
    #[test]
    fn every_source_fuses_into_the_host() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let sources = [
            SourceKind::Process,
            SourceKind::Network,
            SourceKind::Integrity,
            SourceKind::Certificate,
            SourceKind::Auth,
        ];
        for (i, source) in sources.iter().enumerate() {
            let rule = format!("rule-{i}");
            fusion
                .observe_hit(&hit(&rule, Level::Low, &[], *source, i as u64))
                .unwrap();
        }
        assert_eq!(
            fusion
                .observe_anomaly(&AnomalyScore {
                    host: "web-01".into(),
                    score: 0.2,
                    time_ns: T0 + 5 * SECOND,
                    detail: "below the minimum".into(),
                })
                .unwrap(),
            None
        );
        let incident = fusion
            .observe_anomaly(&AnomalyScore {
                host: "web-01".into(),
                score: 1.0,
                time_ns: T0 + 5 * SECOND,
                detail: "net_tx_bytes 40σ".into(),
            })
            .unwrap()
            .unwrap();
        let mut seen: Vec<SourceKind> = incident.evidence.iter().map(|e| e.source).collect();
        seen.dedup();
        assert_eq!(seen.len(), 6);
        let anomaly = incident
            .evidence
            .iter()
            .find(|e| e.rule_id == ANOMALY_RULE_ID)
            .unwrap();
        assert_eq!(anomaly.lr, 10.0);
    }

    #[test]
    fn a_remote_address_fuses_across_hosts() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let ip: std::net::IpAddr = "192.0.2.9".parse().unwrap();
        let mut first = hit("scan", Level::High, &[], SourceKind::Network, 0);
        first.entities.remote_ip = Some(ip);
        let mut second = hit("exploit", Level::High, &[], SourceKind::Network, 5);
        second.entities.host = "db-01".into();
        second.entities.remote_ip = Some(ip);
        fusion.observe_hit(&first).unwrap();
        let incident = fusion.observe_hit(&second).unwrap().unwrap();
        assert_eq!(incident.entity, EntityKey::RemoteAddress { ip });
        assert_eq!(incident.host, "db-01");
        assert_eq!(incident.evidence.len(), 2);
    }

    #[test]
    fn resolving_starts_a_new_incident_next_time() {
        let mut fusion = Fusion::new(ScoreConfig::default()).unwrap();
        let mut h = hit("r", Level::Critical, &[], SourceKind::Process, 0);
        h.likelihood_ratio = Some(1000.0);
        let first = fusion.observe_hit(&h).unwrap().unwrap();
        assert!(fusion.resolve(&first.id));
        assert!(!fusion.resolve(&first.id));
        let second = fusion.observe_hit(&h).unwrap().unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(second.evidence[0].hits, 1);
    }

    #[test]
    fn the_entity_table_is_bounded() {
        let config = ScoreConfig {
            max_entities: 2,
            ..ScoreConfig::default()
        };
        let mut fusion = Fusion::new(config).unwrap();
        for (i, host) in ["a", "b", "c"].iter().enumerate() {
            let mut h = hit("r", Level::Low, &[], SourceKind::Process, i as u64);
            h.entities.host = host.to_string();
            fusion.observe_hit(&h).unwrap();
        }
        assert_eq!(fusion.entity_count(), 2);
        assert!(fusion.assess(&host_key("a")).is_none());
        assert!(fusion.assess(&host_key("c")).is_some());
    }

    /// A host that moves to another worker: the new worker restores the stored incident, and
    /// the hit the dead worker had already folded (detection re-run) changes nothing, while new
    /// evidence updates the same incident exactly as on the first worker.
    #[test]
    fn a_restored_incident_continues_and_a_replayed_hit_is_not_counted_twice() {
        let hits = [
            hit(
                "r.a",
                Level::Critical,
                &["attack.t1110"],
                SourceKind::Auth,
                10,
            ),
            hit(
                "r.b",
                Level::Critical,
                &["attack.t1078"],
                SourceKind::Auth,
                11,
            ),
            hit(
                "r.c",
                Level::Medium,
                &["attack.t1048"],
                SourceKind::Network,
                20,
            ),
        ];
        let mut first = Fusion::new(ScoreConfig::default()).unwrap();
        let mut single = Fusion::new(ScoreConfig::default()).unwrap();
        first.observe_hit(&hits[0]).unwrap();
        single.observe_hit(&hits[0]).unwrap();
        let stored = first.observe_hit(&hits[1]).unwrap().unwrap();
        single.observe_hit(&hits[1]).unwrap();
        let mut second = Fusion::new(ScoreConfig::default()).unwrap();
        second.restore(&stored);
        assert_eq!(second.observe_hit(&hits[1]).unwrap().unwrap(), stored);
        let moved = second.observe_hit(&hits[2]).unwrap().unwrap();
        let reference = single.observe_hit(&hits[2]).unwrap().unwrap();
        assert_eq!(moved.id, stored.id);
        assert_eq!(moved.severity, reference.severity);
        assert_eq!(moved.confidence, reference.confidence);
        assert_eq!(moved.evidence, reference.evidence);
        let resolved = Incident {
            status: IncidentStatus::Resolved,
            ..stored
        };
        let mut third = Fusion::new(ScoreConfig::default()).unwrap();
        third.restore(&resolved);
        assert_eq!(third.entity_count(), 0);
    }
}
