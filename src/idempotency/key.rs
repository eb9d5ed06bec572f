//! The `Idempotency-Key` field's value: a Structured Field String (RFC 9651 §3.3.3), as
//! draft-ietf-httpapi-idempotency-key-header-06 §2 defines it, of 1 to [`MAX_LEN`] characters.

use http::HeaderValue;

pub use crate::problem::KeyFault as Fault;

/// The longest key taken, in characters of the string (after its escapes).
pub const MAX_LEN: usize = 255;

/// The key's characters as they stand between the quotes. A String has one spelling (only
/// `\"` and `\\` are escapes), so these bytes name the key exactly.
pub fn parse(value: &HeaderValue) -> Result<&[u8], Fault> {
    let bytes = value.as_bytes();
    // Leading and trailing spaces are discarded by Structured Field parsing (RFC 9651 §4.2).
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    let field = &bytes[start..end];
    let [b'"', inner @ .., b'"'] = field else {
        return Err(Fault::NotString);
    };
    let (mut len, mut escaped) = (0usize, false);
    for &b in inner {
        match (escaped, b) {
            (true, b'"' | b'\\') => escaped = false,
            (true, _) => return Err(Fault::NotString),
            (false, b'\\') => {
                escaped = true;
                continue;
            }
            // An unescaped quote ends the string: anything after it is not part of it.
            (false, b'"') => return Err(Fault::NotString),
            (false, 0x20..=0x7e) => {}
            (false, _) => return Err(Fault::NotString),
        }
        len += 1;
    }
    if escaped {
        return Err(Fault::NotString);
    }
    match len {
        0 => Err(Fault::Empty),
        n if n > MAX_LEN => Err(Fault::TooLong),
        _ => Ok(inner),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Result<Vec<u8>, Fault> {
        parse(&HeaderValue::from_str(text).unwrap()).map(<[u8]>::to_vec)
    }

    #[test]
    fn a_quoted_string_is_a_key() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(key(&format!("\"{uuid}\"")).unwrap(), uuid.as_bytes());
        assert_eq!(key("  \"a b\" ").unwrap(), b"a b");
        assert_eq!(key(r#""say \"hi\" \\o/""#).unwrap(), br#"say \"hi\" \\o/"#);
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        assert_eq!(key("\"\""), Err(Fault::Empty));
        assert_eq!(key("abc"), Err(Fault::NotString));
        assert_eq!(key("\"abc"), Err(Fault::NotString));
        assert_eq!(key("\"a\"b\""), Err(Fault::NotString));
        assert_eq!(key("\"a\";x=1"), Err(Fault::NotString));
        assert_eq!(key(r#""a\n""#), Err(Fault::NotString));
        assert_eq!(key("\"a\tb\""), Err(Fault::NotString));
        assert_eq!(key("\""), Err(Fault::NotString));
        assert_eq!(key(""), Err(Fault::NotString));
    }

    #[test]
    fn the_length_counts_characters_after_escapes() {
        let most = "k".repeat(MAX_LEN);
        assert!(key(&format!("\"{most}\"")).is_ok());
        assert_eq!(key(&format!("\"{most}k\"")), Err(Fault::TooLong));
        let escaped = r#"\""#.repeat(MAX_LEN);
        assert!(key(&format!("\"{escaped}\"")).is_ok());
    }
}
