//! JSON checks on bodies sluice reads whole: one valid value in UTF-8, or the 400 that says
//! where it is not.

use crate::problem::Problem;

/// Parses without building anything: only whether the bytes are one valid JSON value, in
/// UTF-8 as RFC 8259 §8.1 asks (the parse alone skips over the bytes inside strings).
pub fn validate(bytes: &[u8]) -> Result<(), Problem> {
    if bytes.is_empty() {
        return Ok(());
    }
    if let Err(e) = std::str::from_utf8(bytes) {
        return Err(invalid_at(bytes, e.valid_up_to(), "invalid UTF-8"));
    }
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
        .map(drop)
        .map_err(invalid)
}

/// The 400 for JSON refused at byte `offset`, with its line and column counted from 1.
pub fn invalid_at(bytes: &[u8], offset: usize, reason: &str) -> Problem {
    let before = &bytes[..offset];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    Problem::InvalidJson {
        line: before.iter().filter(|&&b| b == b'\n').count() + 1,
        column: offset - line_start + 1,
        reason: reason.into(),
    }
}

/// A JSON parse error as the 400 it answers.
pub fn invalid(e: serde_json::Error) -> Problem {
    let reason = e.to_string();
    // serde_json appends " at line L column C"; the position has members of its own.
    let reason = reason
        .split(" at line ")
        .next()
        .unwrap_or_default()
        .to_string();
    Problem::InvalidJson {
        line: e.line(),
        column: e.column(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_json_names_line_and_column() {
        assert_eq!(validate(br#"{"a": [1, 2]}"#), Ok(()));
        assert_eq!(validate(b""), Ok(()));
        match validate(b"{\n  \"a\": 1,\n  \"b\" 2\n}") {
            Err(Problem::InvalidJson {
                line: 3,
                column,
                reason,
            }) => {
                assert_eq!(column, 7);
                assert!(!reason.contains("at line"), "{reason}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            validate(b"{} {}").is_err(),
            "trailing data is not one JSON value"
        );
    }
}
