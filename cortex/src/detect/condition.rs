//! The `condition` expression of a Sigma detection, parsed against the rule's search
//! identifiers: `and`, `or`, `not`, parentheses, `1 of pattern*`, `all of pattern*`,
//! `N of …`, `1 of them`, `all of them`. Precedence from loosest: or, and, not, `x of`.

use super::RuleError;

/// Deeper nesting than this is rejected (hostile rules must not exhaust the stack).
const MAX_DEPTH: usize = 64;

/// A parsed condition; leaves are indices into the rule's search list.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    Search(usize),
    And(Vec<Condition>),
    Or(Vec<Condition>),
    Not(Box<Condition>),
    /// At least `n` of the searches match.
    AtLeast(usize, Vec<usize>),
}

impl Condition {
    pub fn evaluate(&self, search: &mut impl FnMut(usize) -> bool) -> bool {
        match self {
            Condition::Search(i) => search(*i),
            Condition::And(parts) => parts.iter().all(|c| c.evaluate(search)),
            Condition::Or(parts) => parts.iter().any(|c| c.evaluate(search)),
            Condition::Not(inner) => !inner.evaluate(search),
            Condition::AtLeast(n, searches) => {
                let mut found = 0;
                for i in searches {
                    if search(*i) {
                        found += 1;
                        if found >= *n {
                            return true;
                        }
                    }
                }
                false
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Token {
    And,
    Or,
    Not,
    Of,
    Open,
    Close,
    Word(String),
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let flush = |word: &mut String, tokens: &mut Vec<Token>| {
        if word.is_empty() {
            return;
        }
        let token = match word.to_ascii_lowercase().as_str() {
            "and" => Token::And,
            "or" => Token::Or,
            "not" => Token::Not,
            "of" => Token::Of,
            _ => Token::Word(word.clone()),
        };
        tokens.push(token);
        word.clear();
    };
    for c in text.chars() {
        match c {
            '(' | ')' => {
                flush(&mut word, &mut tokens);
                tokens.push(if c == '(' { Token::Open } else { Token::Close });
            }
            c if c.is_whitespace() => flush(&mut word, &mut tokens),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut tokens);
    tokens
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    names: &'a [String],
    text: &'a str,
}

/// Parses `text` against the search identifiers `names` (in rule order).
pub fn parse(text: &str, names: &[String]) -> Result<Condition, RuleError> {
    if text.contains('|') {
        return Err(RuleError::Condition {
            condition: text.to_owned(),
            reason: "pipe aggregations (`| count() …`) are obsolete; use a correlation rule".into(),
        });
    }
    let mut parser = Parser {
        tokens: tokenize(text),
        pos: 0,
        names,
        text,
    };
    let condition = parser.or(0)?;
    if let Some(token) = parser.tokens.get(parser.pos) {
        return Err(parser.error(format!("unexpected `{token:?}`")));
    }
    Ok(condition)
}

impl Parser<'_> {
    fn error(&self, reason: String) -> RuleError {
        RuleError::Condition {
            condition: self.text.to_owned(),
            reason,
        }
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        token
    }

    fn or(&mut self, depth: usize) -> Result<Condition, RuleError> {
        let mut parts = vec![self.and(depth)?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            parts.push(self.and(depth)?);
        }
        Ok(collapse(parts, Condition::Or))
    }

    fn and(&mut self, depth: usize) -> Result<Condition, RuleError> {
        let mut parts = vec![self.not(depth)?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            parts.push(self.not(depth)?);
        }
        Ok(collapse(parts, Condition::And))
    }

    fn not(&mut self, depth: usize) -> Result<Condition, RuleError> {
        if self.peek() == Some(&Token::Not) {
            self.pos += 1;
            return Ok(Condition::Not(Box::new(self.not(depth + 1)?)));
        }
        self.primary(depth)
    }

    fn primary(&mut self, depth: usize) -> Result<Condition, RuleError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested deeper than {MAX_DEPTH}")));
        }
        match self.next() {
            Some(Token::Open) => {
                let inner = self.or(depth + 1)?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    _ => Err(self.error("missing `)`".into())),
                }
            }
            Some(Token::Word(word)) if self.peek() == Some(&Token::Of) => {
                self.pos += 1;
                let Some(Token::Word(pattern)) = self.next() else {
                    return Err(self.error(format!("`{word} of` needs a pattern or `them`")));
                };
                self.quantified(&word, &pattern)
            }
            Some(Token::Word(word)) => self
                .names
                .iter()
                .position(|n| *n == word)
                .map(Condition::Search)
                .ok_or_else(|| self.error(format!("search identifier `{word}` is not defined"))),
            Some(token) => Err(self.error(format!("unexpected `{token:?}`"))),
            None => Err(self.error("ends too early".into())),
        }
    }

    fn quantified(&self, quantity: &str, pattern: &str) -> Result<Condition, RuleError> {
        let searches: Vec<usize> = self
            .names
            .iter()
            .enumerate()
            .filter(|(_, name)| {
                if pattern == "them" {
                    !name.starts_with('_')
                } else {
                    wildcard_match(pattern, name)
                }
            })
            .map(|(i, _)| i)
            .collect();
        if searches.is_empty() {
            return Err(self.error(format!("`{pattern}` matches no search identifier")));
        }
        let n = if quantity == "all" {
            searches.len()
        } else {
            quantity
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| self.error(format!("`{quantity} of` needs 1, N or all")))?
        };
        Ok(Condition::AtLeast(n, searches))
    }
}

fn collapse(mut parts: Vec<Condition>, join: fn(Vec<Condition>) -> Condition) -> Condition {
    if parts.len() == 1 {
        parts.remove(0)
    } else {
        join(parts)
    }
}

/// `*` matches any run of characters in search identifier patterns.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut pieces = pattern.split('*');
    let Some(first) = pieces.next() else {
        return false;
    };
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    for (i, piece) in pieces.iter().enumerate() {
        if i + 1 == pieces.len() {
            return rest.ends_with(piece);
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn eval(text: &str, ids: &[&str], true_ids: &[&str]) -> bool {
        let names = names(ids);
        let condition = parse(text, &names).unwrap();
        condition.evaluate(&mut |i| true_ids.contains(&names[i].as_str()))
    }

    #[test]
    fn precedence_and_parentheses() {
        let ids = ["a", "b", "c"];
        assert!(eval("a or b and c", &ids, &["a"]));
        assert!(!eval("(a or b) and c", &ids, &["a"]));
        assert!(eval("not a and b", &ids, &["b"]));
        assert!(!eval("not (a or b)", &ids, &["b"]));
        assert!(eval("a AND NOT b", &ids, &["a"]));
    }

    #[test]
    fn quantifiers() {
        let ids = ["selection_a", "selection_b", "filter_x", "_hidden"];
        assert!(eval("1 of selection_*", &ids, &["selection_b"]));
        assert!(!eval("all of selection_*", &ids, &["selection_b"]));
        assert!(eval(
            "all of selection*",
            &ids,
            &["selection_a", "selection_b"]
        ));
        assert!(eval(
            "1 of selection_* and not 1 of filter_*",
            &ids,
            &["selection_a"]
        ));
        assert!(!eval(
            "1 of selection_* and not 1 of filter_*",
            &ids,
            &["selection_a", "filter_x"]
        ));
        assert!(eval(
            "all of them",
            &ids,
            &["selection_a", "selection_b", "filter_x"]
        ));
        assert!(!eval("all of them", &ids, &["selection_a", "selection_b"]));
        assert!(!eval("1 of them", &ids, &["_hidden"]));
        assert!(eval(
            "2 of selection*",
            &ids,
            &["selection_a", "selection_b"]
        ));
    }

    #[test]
    fn errors_name_the_problem() {
        let ids = names(&["a"]);
        for bad in [
            "b",
            "a and",
            "(a",
            "1 of zzz*",
            "a )",
            "count() by x | a",
            "x of a",
        ] {
            assert!(
                matches!(parse(bad, &ids), Err(RuleError::Condition { .. })),
                "{bad}"
            );
        }
        let deep = format!("{}a{}", "(".repeat(100), ")".repeat(100));
        assert!(parse(&deep, &ids).is_err());
    }

    #[test]
    fn identifier_wildcards() {
        assert!(wildcard_match("sel*", "selection"));
        assert!(wildcard_match("*tion", "selection"));
        assert!(wildcard_match("s*c*n", "selection"));
        assert!(!wildcard_match("s*x*n", "selection"));
        assert!(wildcard_match("exact", "exact"));
        assert!(!wildcard_match("exact", "exactly"));
    }
}
