//! Label selectors (full Kubernetes syntax) and field selectors.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as MetaLabelSelector;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

/// A parsed `labelSelector`; all requirements must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// Splits at commas that are not inside a `( )` value set.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn key(raw: &str, selector: &str) -> Result<String, String> {
    let k = raw.trim();
    if valid_key(k) {
        Ok(k.to_string())
    } else {
        Err(format!("unable to parse requirement: invalid label key {k:?} in selector {selector:?}"))
    }
}

impl LabelSelector {
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(selector) {
            let part = part.trim();
            if part.is_empty() {
                return Err(format!("unable to parse selector {selector:?}: empty requirement"));
            }
            reqs.push(Self::parse_requirement(part, selector)?);
        }
        Ok(Self(reqs))
    }

    fn parse_requirement(part: &str, selector: &str) -> Result<LabelRequirement, String> {
        if let Some(rest) = part.strip_prefix('!') {
            return Ok(LabelRequirement::DoesNotExist(key(rest, selector)?));
        }
        if let Some(open) = part.find('(') {
            let close = part.rfind(')').filter(|c| *c > open && part[c + 1..].trim().is_empty());
            let close =
                close.ok_or_else(|| format!("unable to parse selector {selector:?}: unbalanced parentheses"))?;
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let values: Vec<String> = part[open + 1..close].split(',').map(|v| v.trim().to_string()).collect();
            return match head.as_slice() {
                [k, "in"] => Ok(LabelRequirement::In(key(k, selector)?, values)),
                [k, "notin"] => Ok(LabelRequirement::NotIn(key(k, selector)?, values)),
                _ => Err(format!("unable to parse selector {selector:?}: expected `key in (..)` or `key notin (..)`")),
            };
        }
        if let Some((k, v)) = part.split_once("!=") {
            return Ok(LabelRequirement::NotEquals(key(k, selector)?, v.trim().to_string()));
        }
        if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            return Ok(LabelRequirement::Equals(key(k, selector)?, v.trim().to_string()));
        }
        for (op, gt) in [('>', true), ('<', false)] {
            if let Some((k, v)) = part.split_once(op) {
                let n: i64 = v
                    .trim()
                    .parse()
                    .map_err(|_| format!("unable to parse selector {selector:?}: {v:?} is not an integer"))?;
                let k = key(k, selector)?;
                return Ok(if gt { LabelRequirement::GreaterThan(k, n) } else { LabelRequirement::LessThan(k, n) });
            }
        }
        Ok(LabelRequirement::Exists(key(part, selector)?))
    }

    /// A `metav1.LabelSelector` (`matchLabels`, `matchExpressions`), validated as the API server does; an
    /// absent or empty one selects everything.
    pub fn from_meta(selector: Option<&MetaLabelSelector>) -> Result<Self, String> {
        let mut reqs = Vec::new();
        let Some(selector) = selector else { return Ok(Self(reqs)) };
        for (k, v) in selector.match_labels.iter().flatten() {
            if !valid_key(k) {
                return Err(format!("matchLabels: invalid label key {k:?}"));
            }
            reqs.push(LabelRequirement::Equals(k.clone(), v.clone()));
        }
        for (i, expr) in selector.match_expressions.iter().flatten().enumerate() {
            let field = format!("matchExpressions[{i}]");
            if !valid_key(&expr.key) {
                return Err(format!("{field}.key: invalid label key {:?}", expr.key));
            }
            let values = expr.values.clone().unwrap_or_default();
            let key = expr.key.clone();
            let req = match (expr.operator.as_str(), values.is_empty()) {
                ("In", false) => LabelRequirement::In(key, values),
                ("NotIn", false) => LabelRequirement::NotIn(key, values),
                ("In" | "NotIn", true) => {
                    return Err(format!(
                        "{field}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
                    ))
                }
                ("Exists", true) => LabelRequirement::Exists(key),
                ("DoesNotExist", true) => LabelRequirement::DoesNotExist(key),
                ("Exists" | "DoesNotExist", false) => {
                    return Err(format!(
                        "{field}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                    ))
                }
                (op, _) => {
                    return Err(format!("{field}.operator: Invalid value: {op:?}: not a valid selector operator"))
                }
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object (its `metadata.labels`) satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelRequirement::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::DoesNotExist(k) => get(k).is_none(),
            LabelRequirement::GreaterThan(k, n) => get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l > *n),
            LabelRequirement::LessThan(k, n) => get(k).and_then(|l| l.parse::<i64>().ok()).is_some_and(|l| l < *n),
        })
    }
}

/// A parsed `fieldSelector`: `path=value`, `path==value`, `path!=value`, comma-separated. Any dotted path is
/// accepted (a real server allows a few per type: `metadata.name`, `metadata.namespace`, `spec.nodeName`,
/// `status.phase`, ...); a missing field compares as the empty string, as it does for `spec.nodeName=`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(selector: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        if selector.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in selector.split(',') {
            let (path, equal, value) = if let Some((p, v)) = part.split_once("!=") {
                (p, false, v)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, true, v)
            } else {
                return Err(format!("invalid field selector {selector:?}: {part:?} has no operator"));
            };
            let path = path.trim();
            if path.is_empty() || path.starts_with('.') || path.ends_with('.') {
                return Err(format!("invalid field selector {selector:?}: bad field {path:?}"));
            }
            reqs.push((path.to_string(), equal, value.trim().to_string()));
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether an object satisfies every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, equal, value)| {
            let field = path.split('.').try_fold(object, |v, seg| v.get(seg));
            let actual = match field {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selector_operators() {
        let p = pod(json!({"app": "web", "tier": "front", "rev": "7"}));
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app in (db)", false),
            ("app notin (db)", true),
            ("missing notin (db)", true),
            ("app notin (web,db)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front),!missing", true),
            ("app=web,tier=back", false),
            ("rev>5", true),
            ("rev<5", false),
        ];
        for (sel, want) in cases {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&p), want, "{sel}");
        }
        assert!(!LabelSelector::parse("app").expect("parses").matches(&pod(Value::Null)));
    }

    #[test]
    fn meta_label_selectors() {
        let parse = |v: Value| {
            let typed: MetaLabelSelector = serde_json::from_value(v).expect("selector shape");
            LabelSelector::from_meta(Some(&typed))
        };
        let p = pod(json!({"app": "web", "tier": "front"}));
        let sel = parse(json!({"matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]},
                                 {"key": "gone", "operator": "DoesNotExist"}]}))
        .expect("valid");
        assert!(sel.matches(&p));
        let sel = parse(json!({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["front"]}]}));
        assert!(!sel.expect("valid").matches(&p));
        assert!(parse(json!({})).expect("empty").matches(&pod(Value::Null)));
        assert!(LabelSelector::from_meta(None).expect("absent").is_empty());
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Near", "values": ["x"]}]}),
            json!({"matchLabels": {"bad key": "x"}}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_selector_rejects_garbage() {
        for sel in ["app in (web", "a b c", "app=web,,x=y", "app foo (x)", "=x", "rev>abc"] {
            assert!(LabelSelector::parse(sel).is_err(), "{sel}");
        }
    }

    #[test]
    fn field_selector_paths() {
        let p = pod(json!({}));
        let cases = [
            ("metadata.name=p", true),
            ("metadata.name==p", true),
            ("metadata.namespace!=ns", false),
            ("spec.nodeName=n1,status.phase=Running", true),
            ("status.phase!=Running", false),
            ("spec.hostname=", true),
        ];
        for (sel, want) in cases {
            assert_eq!(FieldSelector::parse(sel).expect("parses").matches(&p), want, "{sel}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
    }
}
