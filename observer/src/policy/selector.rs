//! Compiled label selectors.
//!
//! In: a `metav1.LabelSelector` (`matchLabels` and `matchExpressions`). Out: a
//! flat list of requirements checked against a label lookup, with the API
//! server's validation of operators and values applied at compile time.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::error::Problem;
use crate::inventory::model::Labels;

/// Up to this many labels, a linear scan beats the tree search.
const SCAN_LIMIT: usize = 8;

/// What one requirement asks of a label's value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Test {
    /// `matchLabels` entry or `In` with one value.
    Equals(Box<str>),
    /// `In`: present and one of the values.
    In(Box<[Box<str>]>),
    /// `NotIn`: absent, or present and none of the values.
    NotIn(Box<[Box<str>]>),
    /// `Exists`.
    Exists,
    /// `DoesNotExist`.
    DoesNotExist,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Requirement {
    key: Box<str>,
    test: Test,
}

/// A label selector; with no requirements it selects everything. Equal
/// selectors have the same requirements in the same order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Selector {
    requirements: Box<[Requirement]>,
}

impl Selector {
    /// Compiles a selector; `None` (absent) selects everything, like `{}`.
    pub(crate) fn compile(selector: Option<&LabelSelector>) -> Result<Self, Problem> {
        let Some(selector) = selector else { return Ok(Self::default()) };
        let mut requirements: Vec<Requirement> = selector
            .match_labels
            .iter()
            .flatten()
            .map(|(key, value)| Requirement { key: key.as_str().into(), test: Test::Equals(value.as_str().into()) })
            .collect();
        for expression in selector.match_expressions.iter().flatten() {
            let values: Vec<Box<str>> = expression.values.iter().flatten().map(|value| value.as_str().into()).collect();
            let operator = expression.operator.as_str();
            let test = match operator {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(Problem::MissingValues { operator: operator.to_owned() });
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(Problem::UnexpectedValues { operator: operator.to_owned() });
                }
                "In" => Test::In(values.into()),
                "NotIn" => Test::NotIn(values.into()),
                "Exists" => Test::Exists,
                "DoesNotExist" => Test::DoesNotExist,
                _ => return Err(Problem::UnsupportedOperator { operator: operator.to_owned() }),
            };
            requirements.push(Requirement { key: expression.key.as_str().into(), test });
        }
        Ok(Self { requirements: requirements.into() })
    }

    /// Whether it has no requirements, and so selects everything.
    pub(crate) fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// A `key=value` every selected object carries, if the selector requires one.
    pub(crate) fn required_label(&self) -> Option<(&str, &str)> {
        self.requirements.iter().find_map(|requirement| match &requirement.test {
            Test::Equals(value) => Some((&*requirement.key, &**value)),
            _ => None,
        })
    }

    /// Whether an object with these labels is selected.
    pub(crate) fn matches(&self, labels: &Labels) -> bool {
        // Pods carry a handful of labels: a scan that compares lengths before
        // bytes skips most string comparisons a tree search would make.
        if labels.len() <= SCAN_LIMIT {
            self.matches_with(|key| labels.iter().find(|(label, _)| same(label, key)).map(|(_, value)| value.as_str()))
        } else {
            self.matches_with(|key| labels.get(key).map(String::as_str))
        }
    }

    /// Whether an object whose labels `label` looks up is selected.
    pub(crate) fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements.iter().all(|requirement| {
            let value = label(&requirement.key);
            match &requirement.test {
                Test::Equals(expected) => value.is_some_and(|value| same(value, expected)),
                Test::In(values) => value.is_some_and(|value| values.iter().any(|expected| same(value, expected))),
                Test::NotIn(values) => value.is_none_or(|value| !values.iter().any(|expected| same(value, expected))),
                Test::Exists => value.is_some(),
                Test::DoesNotExist => value.is_none(),
            }
        })
    }
}

/// String equality for label keys and values, which are short: comparing
/// lengths and then bytes in place avoids a call into libc's memcmp per label.
pub(crate) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && if a.len() <= 32 { a.iter().zip(b).all(|(x, y)| x == y) } else { a == b }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(json: serde_json::Value) -> Result<Selector, Problem> {
        Selector::compile(Some(&serde_json::from_value(json).expect("valid selector")))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn absent_and_empty_select_everything() {
        assert!(Selector::compile(None).expect("absent").matches(&labels(&[])));
        assert!(selector(serde_json::json!({})).expect("empty").matches(&labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_and_expressions_all_apply() {
        let selector = selector(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["front", "edge"]},
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "team", "operator": "Exists"},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .expect("valid");
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a")])));
        assert!(selector.matches(&labels(&[("app", "web"), ("tier", "front"), ("team", "a"), ("env", "prod")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "back"), ("team", "a")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a"), ("env", "dev")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "edge")])));
        assert!(!selector.matches(&labels(&[("app", "web"), ("tier", "edge"), ("team", "a"), ("legacy", "")])));
        assert!(!selector.matches(&labels(&[("app", "api"), ("tier", "edge"), ("team", "a")])));
    }

    #[test]
    fn operators_are_validated_like_the_api_server() {
        let error = |json| selector(json).expect_err("invalid");
        assert_eq!(
            error(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]})),
            Problem::MissingValues { operator: "In".to_owned() }
        );
        assert_eq!(
            error(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]})),
            Problem::UnexpectedValues { operator: "Exists".to_owned() }
        );
        assert_eq!(
            error(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})),
            Problem::UnsupportedOperator { operator: "Gt".to_owned() }
        );
    }
}
