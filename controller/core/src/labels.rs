//! Labels and label selectors, with the Kubernetes validation rules.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// A label set. Sorted, so that output and hashing are deterministic.
pub type Labels = BTreeMap<String, String>;

/// A validated label selector. No requirements selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// One requirement of a selector (`matchLabels` entries become [`Op::Equals`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "operator", content = "values")]
pub enum Op {
    Equals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

impl Selector {
    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    /// A selector built from `matchLabels` pairs only.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut requirements: Vec<Requirement> = pairs
            .into_iter()
            .map(|(k, v)| Requirement {
                key: k.to_owned(),
                op: Op::Equals(v.to_owned()),
            })
            .collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Self { requirements }
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl Requirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Equals(v) => value == Some(v),
            Op::In(vs) => value.is_some_and(|x| vs.contains(x)),
            Op::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl fmt::Display for Selector {
    /// The `kubectl -l` syntax: `app=api,tier in (a,b),!legacy`; `{}` selects everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.requirements.is_empty() {
            return f.write_str("{}");
        }
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match &r.op {
                Op::Equals(v) => write!(f, "{}={}", r.key, v)?,
                Op::In(vs) => write!(f, "{} in ({})", r.key, vs.join(","))?,
                Op::NotIn(vs) => write!(f, "{} notin ({})", r.key, vs.join(","))?,
                Op::Exists => write!(f, "{}", r.key)?,
                Op::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

/// Validates a label key: an optional DNS-subdomain prefix and `/`, then a name
/// of at most 63 characters (alphanumerics, `-`, `_`, `.`, alphanumeric at both ends).
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        validate_dns_subdomain(p).map_err(|e| format!("invalid label key {key:?}: prefix {e}"))?;
    }
    if name.is_empty() {
        return Err(format!(
            "invalid label key {key:?}: name part must not be empty"
        ));
    }
    validate_label_token(name).map_err(|e| format!("invalid label key {key:?}: {e}"))
}

/// Validates a label value: empty, or at most 63 characters of alphanumerics,
/// `-`, `_`, `.` with an alphanumeric at both ends.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    validate_label_token(value).map_err(|e| format!("invalid label value {value:?}: {e}"))
}

fn validate_label_token(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err("must be at most 63 characters".into());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if !s.chars().all(ok_char) {
        return Err("may contain only alphanumerics, '-', '_' and '.'".into());
    }
    let first = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let last = s.chars().last().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first || !last {
        return Err("must begin and end with an alphanumeric character".into());
    }
    Ok(())
}

/// RFC 1123 subdomain: at most 253 characters, dot-separated lowercase labels.
pub fn validate_dns_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("{s:?} must be 1 to 253 characters"));
    }
    for part in s.split('.') {
        let ok = !part.is_empty()
            && part.len() <= 63
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !part.starts_with('-')
            && !part.ends_with('-');
        if !ok {
            return Err(format!("{s:?} is not a lowercase RFC 1123 subdomain"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn operators() {
        let l = labels(&[("app", "api"), ("tier", "back")]);
        let req = |key: &str, op: Op| Selector {
            requirements: vec![Requirement {
                key: key.into(),
                op,
            }],
        };
        assert!(Selector::everything().matches(&l));
        assert!(req("app", Op::Equals("api".into())).matches(&l));
        assert!(!req("app", Op::Equals("web".into())).matches(&l));
        assert!(req("tier", Op::In(vec!["front".into(), "back".into()])).matches(&l));
        assert!(!req("zone", Op::In(vec!["a".into()])).matches(&l));
        assert!(req("zone", Op::NotIn(vec!["a".into()])).matches(&l));
        assert!(!req("tier", Op::NotIn(vec!["back".into()])).matches(&l));
        assert!(req("app", Op::Exists).matches(&l));
        assert!(!req("zone", Op::Exists).matches(&l));
        assert!(req("zone", Op::DoesNotExist).matches(&l));
        assert!(!req("app", Op::DoesNotExist).matches(&l));
    }

    #[test]
    fn key_and_value_validation() {
        assert!(validate_key("app").is_ok());
        assert!(validate_key("kubernetes.io/metadata.name").is_ok());
        assert!(validate_key("Bad/x").is_err());
        assert!(validate_key("-x").is_err());
        assert!(validate_key("a/").is_err());
        assert!(validate_value("").is_ok());
        assert!(validate_value("v1.2_3-x").is_ok());
        assert!(validate_value("x-").is_err());
        assert!(validate_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn display_is_kubectl_syntax() {
        let s = Selector {
            requirements: vec![
                Requirement {
                    key: "app".into(),
                    op: Op::Equals("api".into()),
                },
                Requirement {
                    key: "tier".into(),
                    op: Op::In(vec!["a".into(), "b".into()]),
                },
                Requirement {
                    key: "legacy".into(),
                    op: Op::DoesNotExist,
                },
            ],
        };
        assert_eq!(s.to_string(), "app=api,tier in (a,b),!legacy");
    }
}
