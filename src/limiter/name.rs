//! A policy's name, fit for the rate-limit headers as it is.

use std::fmt;
use std::sync::Arc;

/// A policy's name: non-empty, printable ASCII, without `"` or `\`. The rate-limit headers
/// write it between the quotes of a Structured Field string (RFC 8941 §3.3.3), where those two
/// would need escapes and anything else is not allowed; a `PolicyName` can go there as it is.
/// Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyName(Arc<str>);

/// A name that is not a [`PolicyName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a policy name is printable ASCII, without '\"' or '\\'")]
pub struct InvalidPolicyName;

impl PolicyName {
    /// `name`, if the headers can carry it as it is.
    pub fn new(name: &str) -> Option<PolicyName> {
        let quotable = |b: u8| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\';
        (!name.is_empty() && name.bytes().all(quotable)).then(|| PolicyName(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `NAME.rate`: what the rate limit of a policy that also has a window is called. The
    /// suffix is itself quotable, so this is a name too.
    pub fn rate_name(&self) -> PolicyName {
        PolicyName(format!("{}.rate", self.0).into())
    }
}

impl TryFrom<&str> for PolicyName {
    type Error = InvalidPolicyName;

    fn try_from(name: &str) -> Result<PolicyName, InvalidPolicyName> {
        PolicyName::new(name).ok_or(InvalidPolicyName)
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for PolicyName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for PolicyName {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for PolicyName {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_ascii_is_a_name() {
        let all: String = (' '..='~').filter(|&c| c != '"' && c != '\\').collect();
        for name in ["default", "a", " ", "partner tier/2 gold-tier_2.v1", &all] {
            let checked = PolicyName::new(name).expect(name);
            assert_eq!(checked.as_str(), name);
            assert_eq!(checked.to_string(), name);
            assert_eq!(PolicyName::try_from(name), Ok(checked));
        }
    }

    #[test]
    fn quotes_backslashes_controls_non_ascii_and_empty_are_not() {
        let bad = [
            "",
            "we\"ird",
            "a\\b",
            "tab\there",
            "nl\n",
            "nul\0",
            "del\x7f",
            "caf\u{e9}",
        ];
        for name in bad {
            assert_eq!(PolicyName::new(name), None, "{name:?}");
            assert_eq!(PolicyName::try_from(name), Err(InvalidPolicyName));
        }
    }

    #[test]
    fn the_rate_limits_name_is_the_policys_and_dot_rate() {
        let name = PolicyName::new("gold").unwrap();
        assert_eq!(name.rate_name(), "gold.rate");
        assert_eq!(name.rate_name().rate_name().as_str(), "gold.rate.rate");
    }

    #[test]
    fn clones_share_the_text() {
        let name = PolicyName::new("default").unwrap();
        assert!(std::ptr::eq(name.as_str(), name.clone().as_str()));
    }
}
