//! Kubernetes label selectors in their string form, as `kubectl -l` takes them:
//! `app=web`, `app==web`, `tier!=cache`, `env in (prod,staging)`, `env notin (dev)`, `release`,
//! `!legacy`, and `replicas>1` / `replicas<5` (integer comparison). A comma means AND; whitespace
//! around tokens is ignored; an empty selector matches everything.
//!
//! Semantics follow `k8s.io/apimachinery/pkg/labels`: `!=` and `notin` also match objects that
//! do not have the label at all. Two deliberate differences, both refusing what is almost
//! certainly a typo: an empty value list `in ()` and an empty entry in a list `in (a,,b)` are
//! errors (Kubernetes reads them as the empty string). `a=` (label `a` with an empty value)
//! stays valid, as in Kubernetes.
//!
//! Also home of the DNS-1123 name checks the rest of the crate validates names with.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// One value for `=`, `==`, `!=`; one or more for `in`/`notin`; none for exists/not-exists;
    /// one integer for `>`/`<`.
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// What is wrong with a selector, and where (a 0-based character position in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?} at position {position}: {message}")]
pub struct SelectorError {
    pub selector: String,
    pub position: usize,
    pub message: String,
}

impl Selector {
    /// Parses the string form; the empty (or all-blank) string selects everything.
    pub fn parse(selector: &str) -> Result<Selector, SelectorError> {
        Parser::new(selector).parse()
    }

    /// True when the selector has no requirements and so matches everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::parse(s)
    }
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let contains = |v: &String| self.values.iter().any(|x| x == v);
        match self.operator {
            Operator::Equals | Operator::In => value.is_some_and(contains),
            Operator::NotEquals | Operator::NotIn => !value.is_some_and(contains),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                // The parser guarantees one integer value; a label that is not an integer never matches.
                let (Some(have), Some(want)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

impl fmt::Display for Selector {
    /// The canonical string form (parses back to an equal selector).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let first = r.values.first().map(String::as_str).unwrap_or("");
            match r.operator {
                Operator::Equals => write!(f, "{}={}", r.key, first)?,
                Operator::NotEquals => write!(f, "{}!={}", r.key, first)?,
                Operator::In => write!(f, "{} in ({})", r.key, r.values.join(","))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, r.values.join(","))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
                Operator::GreaterThan => write!(f, "{}>{}", r.key, first)?,
                Operator::LessThan => write!(f, "{}<{}", r.key, first)?,
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A run of characters that are not whitespace and not one of `,()=!<>`.
    Word(String),
    Comma,
    Open,
    Close,
    /// `=` or `==`.
    Equals,
    NotEquals,
    Bang,
    Greater,
    Less,
    End,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w:?}"),
            Token::Comma => f.write_str("','"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Equals => f.write_str("'='"),
            Token::NotEquals => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::Greater => f.write_str("'>'"),
            Token::Less => f.write_str("'<'"),
            Token::End => f.write_str("the end of the selector"),
        }
    }
}

struct Parser<'a> {
    source: &'a str,
    chars: Vec<char>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(source: &'a str) -> Self {
        Parser { source, chars: source.chars().collect(), pos: 0 }
    }

    fn error(&self, position: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { selector: self.source.to_string(), position, message: message.into() }
    }

    fn skip_blanks(&mut self) {
        while self.chars.get(self.pos).is_some_and(|c| c.is_whitespace()) {
            self.pos += 1;
        }
    }

    /// The next token and the position it starts at, without consuming it.
    fn peek(&mut self) -> (Token, usize) {
        self.skip_blanks();
        let start = self.pos;
        let (token, _) = self.scan(start);
        (token, start)
    }

    /// Consumes and returns the next token and its start position.
    fn next(&mut self) -> (Token, usize) {
        self.skip_blanks();
        let start = self.pos;
        let (token, end) = self.scan(start);
        self.pos = end;
        (token, start)
    }

    fn scan(&self, start: usize) -> (Token, usize) {
        let at = |i: usize| self.chars.get(i).copied();
        match at(start) {
            None => (Token::End, start),
            Some(',') => (Token::Comma, start + 1),
            Some('(') => (Token::Open, start + 1),
            Some(')') => (Token::Close, start + 1),
            Some('>') => (Token::Greater, start + 1),
            Some('<') => (Token::Less, start + 1),
            Some('=') if at(start + 1) == Some('=') => (Token::Equals, start + 2),
            Some('=') => (Token::Equals, start + 1),
            Some('!') if at(start + 1) == Some('=') => (Token::NotEquals, start + 2),
            Some('!') => (Token::Bang, start + 1),
            Some(_) => {
                let mut end = start;
                while at(end).is_some_and(|c| !c.is_whitespace() && !",()=!<>".contains(c)) {
                    end += 1;
                }
                (Token::Word(self.chars[start..end].iter().collect()), end)
            }
        }
    }

    fn parse(mut self) -> Result<Selector, SelectorError> {
        let mut requirements = Vec::new();
        if self.peek().0 == Token::End {
            return Ok(Selector { requirements });
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next() {
                (Token::End, _) => break,
                (Token::Comma, at) => {
                    if self.peek().0 == Token::End {
                        return Err(self.error(at, "trailing ',' with no requirement after it"));
                    }
                }
                (other, at) => {
                    return Err(self.error(at, format!("expected ',' or the end of the selector, found {other}")))
                }
            }
        }
        Ok(Selector { requirements })
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (token, at) = self.next();
        let (negated, key_token, key_at) = match token {
            Token::Bang => {
                let (key, key_at) = self.next();
                (true, key, key_at)
            }
            other => (false, other, at),
        };
        let key = match key_token {
            Token::Word(w) => w,
            other => return Err(self.error(key_at, format!("expected a label key, found {other}"))),
        };
        validate_key(&key).map_err(|m| self.error(key_at, m))?;
        if negated {
            return Ok(Requirement { key, operator: Operator::DoesNotExist, values: vec![] });
        }
        let (token, op_at) = self.peek();
        let operator = match token {
            Token::Comma | Token::End => return Ok(Requirement { key, operator: Operator::Exists, values: vec![] }),
            Token::Equals => Operator::Equals,
            Token::NotEquals => Operator::NotEquals,
            Token::Greater => Operator::GreaterThan,
            Token::Less => Operator::LessThan,
            Token::Word(w) if w == "in" => Operator::In,
            Token::Word(w) if w == "notin" => Operator::NotIn,
            other => {
                return Err(self.error(
                    op_at,
                    format!("expected an operator (=, ==, !=, in, notin, >, <), ',' or the end after key {key:?}, found {other}"),
                ))
            }
        };
        self.next();
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_list()?,
            Operator::GreaterThan | Operator::LessThan => {
                let (token, at) = self.next();
                match token {
                    Token::Word(w) if w.parse::<i64>().is_ok() => vec![w],
                    other => return Err(self.error(at, format!("'>' and '<' need an integer value, found {other}"))),
                }
            }
            _ => {
                // `key=` with nothing after it means "the label is present with an empty value".
                let (token, at) = self.peek();
                match token {
                    Token::Comma | Token::End => vec![String::new()],
                    Token::Word(w) => {
                        self.next();
                        validate_value(&w).map_err(|m| self.error(at, m))?;
                        vec![w]
                    }
                    other => return Err(self.error(at, format!("expected a label value, found {other}"))),
                }
            }
        };
        Ok(Requirement { key, operator, values })
    }

    fn value_list(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            (Token::Open, _) => {}
            (other, at) => return Err(self.error(at, format!("expected '(' to start the value list, found {other}"))),
        }
        let mut values: Vec<String> = Vec::new();
        loop {
            match self.next() {
                (Token::Word(w), at) => {
                    validate_value(&w).map_err(|m| self.error(at, m))?;
                    if !values.contains(&w) {
                        values.push(w);
                    }
                }
                (Token::Close, at) if values.is_empty() => return Err(self.error(at, "empty value list")),
                (other, at) => return Err(self.error(at, format!("expected a value in the list, found {other}"))),
            }
            match self.next() {
                (Token::Comma, _) => {}
                (Token::Close, _) => return Ok(values),
                (Token::End, at) => return Err(self.error(at, "missing ')' to close the value list")),
                (other, at) => {
                    return Err(self.error(at, format!("expected ',' or ')' in the value list, found {other}")))
                }
            }
        }
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters (alphanumerics, `-`, `_`, `.`; alphanumeric at both ends).
fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if !is_dns1123_subdomain(prefix) {
            return Err(format!("label key {key:?}: prefix {prefix:?} is not a DNS subdomain"));
        }
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "label key {key:?} is invalid: the name part must be 1-63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid: at most 63 characters of letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Kubernetes name rules, shared with every crate through the events crate.
pub use coracle_events::names::{is_dns1123_label, is_dns1123_subdomain};

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn parses_every_operator() {
        let s =
            sel(" app = web , tier==front,env!=dev, zone in ( a , b ),track notin (canary),release,!legacy,n>2,m<10");
        let ops: Vec<Operator> = s.requirements().iter().map(|r| r.operator).collect();
        assert_eq!(
            ops,
            vec![
                Operator::Equals,
                Operator::Equals,
                Operator::NotEquals,
                Operator::In,
                Operator::NotIn,
                Operator::Exists,
                Operator::DoesNotExist,
                Operator::GreaterThan,
                Operator::LessThan,
            ]
        );
        assert_eq!(s.requirements()[3].values, vec!["a", "b"]);
        assert_eq!(
            s.to_string(),
            "app=web,tier=front,env!=dev,zone in (a,b),track notin (canary),release,!legacy,n>2,m<10"
        );
        assert_eq!(sel(&s.to_string()), s);
    }

    #[test]
    fn empty_selector_matches_everything() {
        assert!(sel("").is_empty());
        assert!(sel("   ").matches(&labels(&[])));
        assert!(sel("").matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let web = labels(&[("app", "web"), ("env", "prod"), ("replicas", "3"), ("example.com/team", "storage")]);
        let bare = labels(&[]);
        assert!(sel("app=web").matches(&web));
        assert!(sel("app==web,env=prod").matches(&web));
        assert!(!sel("app=web,env=dev").matches(&web));
        assert!(!sel("app=web").matches(&bare));
        // `!=` and `notin` match objects without the label.
        assert!(sel("app!=db").matches(&web));
        assert!(sel("app!=db").matches(&bare));
        assert!(!sel("app!=web").matches(&web));
        assert!(sel("env in (prod,staging)").matches(&web));
        assert!(!sel("env in (staging)").matches(&web));
        assert!(!sel("env in (prod)").matches(&bare));
        assert!(sel("env notin (dev)").matches(&web));
        assert!(sel("env notin (dev)").matches(&bare));
        assert!(!sel("env notin (prod,dev)").matches(&web));
        assert!(sel("app").matches(&web));
        assert!(!sel("app").matches(&bare));
        assert!(sel("!legacy").matches(&web));
        assert!(!sel("!app").matches(&web));
        assert!(sel("replicas>2,replicas<4").matches(&web));
        assert!(!sel("replicas>3").matches(&web));
        assert!(!sel("app>1").matches(&web), "non-integer label never matches a comparison");
        assert!(sel("example.com/team=storage").matches(&web));
        assert!(sel("app=").matches(&labels(&[("app", "")])));
        assert!(!sel("app=").matches(&web));
    }

    #[test]
    fn errors_show_the_selector_position_and_problem() {
        let e = Selector::parse("app in (a,b").expect_err("unclosed");
        assert_eq!(e.position, 11);
        assert_eq!(
            e.to_string(),
            "invalid label selector \"app in (a,b\" at position 11: missing ')' to close the value list"
        );

        let cases = [
            ("app=web,", 7, "trailing ','"),
            (",app", 0, "expected a label key, found ','"),
            ("app in a", 7, "expected '(' to start the value list, found \"a\""),
            ("app in ()", 8, "empty value list"),
            ("app in (a,,b)", 10, "expected a value in the list, found ','"),
            ("app web", 4, "expected an operator"),
            ("app=web tier=x", 8, "expected ',' or the end of the selector, found \"tier\""),
            ("app=we b", 7, "expected ',' or the end"),
            ("-app=x", 0, "label key \"-app\" is invalid"),
            ("Example_.com/x=y", 0, "prefix \"Example_.com\" is not a DNS subdomain"),
            ("app=-bad-", 4, "label value \"-bad-\" is invalid"),
            ("n>two", 2, "need an integer value, found \"two\""),
            ("!", 1, "expected a label key, found the end of the selector"),
            ("app=(x)", 4, "expected a label value, found '('"),
        ];
        for (input, position, fragment) in cases {
            let e = Selector::parse(input).expect_err(input);
            assert_eq!(e.selector, input);
            assert_eq!(e.position, position, "{input}: {e}");
            assert!(e.message.contains(fragment), "{input}: {e}");
        }
    }

    #[test]
    fn dns_names() {
        assert!(is_dns1123_label("data-0"));
        assert!(!is_dns1123_label("Data"));
        assert!(!is_dns1123_label("-a"));
        assert!(!is_dns1123_label("a.b"));
        assert!(!is_dns1123_label(&"a".repeat(64)));
        assert!(is_dns1123_subdomain("web-0.example"));
        assert!(!is_dns1123_subdomain("web..0"));
        assert!(!is_dns1123_subdomain(""));
    }
}
