//! Reading a batch body: a `Value` of what the checks look at, and each item's `body` as
//! written, which is what goes upstream (a `Value` would re-spell numbers, and refuses those
//! past an f64, such as `1e400`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::pipeline::{invalid_json, invalid_json_at};
use crate::problem::Problem;

/// serde_json's nesting limit for a `Value`: 127 levels pass, the 128th does not.
const MAX_DEPTH: usize = 128;

/// A batch as read. In `value` each item's `body` is `null`; its text is in `bodies`, by
/// item index (an item without one may be past the end).
#[derive(Debug)]
pub struct Document<'a> {
    pub value: Value,
    pub bodies: Vec<Option<&'a RawValue>>,
}

/// Reads a batch body; anything that is not JSON is a 400.
pub fn read(bytes: &[u8]) -> Result<Document<'_>, Problem> {
    // The parse refuses what is not JSON or not UTF-8, in the bodies too.
    let mut bodies = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let reader = Reader {
        at: At::Top,
        bodies: &mut bodies,
    };
    let value = reader.deserialize(&mut de).map_err(invalid_json)?;
    de.end().map_err(invalid_json)?;
    holdable(bytes)?;
    Ok(Document { value, bodies })
}

/// Refuses, anywhere in the batch, what JSON allows but a `Value` cannot hold: a lone
/// surrogate escape, and nesting past `MAX_DEPTH`. The bodies are never made values, but are
/// held to the same limits, so that what a batch refuses does not depend on where it is.
/// `bytes` must be valid JSON.
pub(super) fn holdable(bytes: &[u8]) -> Result<(), Problem> {
    let (mut depth, mut in_string, mut high) = (0usize, false, false);
    let mut i = 0;
    while i < bytes.len() {
        let at = i;
        i += 1;
        if !in_string {
            match bytes[at] {
                b'"' => in_string = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
            if depth == MAX_DEPTH {
                return Err(invalid_json_at(bytes, at, "nested too deep"));
            }
            continue;
        }
        // Each character, escape or the closing quote: after a high surrogate, only a low
        // one may come, and a low one only after a high one.
        let unit = match (bytes[at], bytes.get(i)) {
            (b'\\', Some(b'u')) => {
                i += 5;
                bytes.get(at + 2..at + 6).and_then(hex)
            }
            (b'\\', _) => {
                i += 1;
                None
            }
            (b'"', _) => {
                in_string = false;
                None
            }
            _ => None,
        };
        if high != unit.is_some_and(|u| (0xDC00..0xE000).contains(&u)) {
            return Err(invalid_json_at(bytes, at, "lone surrogate in a \\u escape"));
        }
        high = unit.is_some_and(|u| (0xD800..0xDC00).contains(&u));
    }
    Ok(())
}

fn hex(digits: &[u8]) -> Option<u16> {
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// Where the reader is: only an item's `body` is kept as written.
#[derive(Clone, Copy)]
enum At {
    Top,
    Requests,
    Item(usize),
    Inside,
}

/// Builds the `Value`, setting each item's body aside. It builds every level itself: a
/// `Value`'s own reader takes an object whose one key is `"$serde_json::private::RawValue"`
/// for the JSON text it holds.
struct Reader<'r, 'de> {
    at: At,
    bodies: &'r mut Vec<Option<&'de RawValue>>,
}

impl<'de> DeserializeSeed<'de> for Reader<'_, 'de> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Reader<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut list = Vec::new();
        loop {
            let at = match self.at {
                At::Requests => At::Item(list.len()),
                _ => At::Inside,
            };
            let bodies = &mut *self.bodies;
            match seq.next_element_seed(Reader { at, bodies })? {
                Some(v) => list.push(v),
                None => return Ok(Value::Array(list)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match (self.at, key.as_str()) {
                (At::Top, "requests") => {
                    // The last of duplicate members is the one read, as in a `Value`.
                    self.bodies.clear();
                    map.next_value_seed(Reader {
                        at: At::Requests,
                        bodies: &mut *self.bodies,
                    })?
                }
                (At::Item(i), "body") => {
                    if self.bodies.len() <= i {
                        self.bodies.resize(i + 1, None);
                    }
                    self.bodies[i] = Some(map.next_value()?);
                    Value::Null
                }
                _ => map.next_value_seed(Reader {
                    at: At::Inside,
                    bodies: &mut *self.bodies,
                })?,
            };
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bodies(json: &str) -> Vec<Option<&str>> {
        let doc = read(json.as_bytes()).unwrap();
        doc.bodies.iter().map(|b| b.map(RawValue::get)).collect()
    }

    fn refused(json: &str) -> String {
        match read(json.as_bytes()) {
            Err(Problem::InvalidJson { reason, .. }) => reason,
            other => panic!("expected a 400 for {json}, got {other:?}"),
        }
    }

    #[test]
    fn bodies_are_kept_as_written_and_the_value_holds_null_in_their_place() {
        let json = r#"{"requests": [{"body": {"a":1e2,"b":1e400} }, {"id": "x"}, {"body": null},
            {"body": 1, "body": "last"}], "requests2": {"body": 1}}"#;
        assert_eq!(
            bodies(json),
            [
                Some(r#"{"a":1e2,"b":1e400}"#),
                None,
                Some("null"),
                Some(r#""last""#)
            ]
        );
        let doc = read(json.as_bytes()).unwrap();
        assert_eq!(doc.value["requests"][0]["body"], Value::Null);
        assert_eq!(doc.value["requests"][3]["body"], Value::Null);
        assert_eq!(doc.value["requests2"]["body"], 1);
    }

    #[test]
    fn an_object_shaped_like_a_serde_json_raw_value_stays_an_object() {
        let json = r#"{"requests": [{"id": {"$serde_json::private::RawValue": "\"a\""}}]}"#;
        let doc = read(json.as_bytes()).unwrap();
        let id = &doc.value["requests"][0]["id"];
        assert_eq!(id.as_object().unwrap().len(), 1, "{id}");
        let json = r#"{"requests": [{"headers": {"$serde_json::private::RawValue": 1}}]}"#;
        assert!(read(json.as_bytes()).unwrap().value["requests"][0]["headers"].is_object());
    }

    #[test]
    fn only_the_last_requests_member_gives_bodies() {
        let json = r#"{"requests": [{"body": 1}, {"body": 2}], "requests": [{"id": "a"}]}"#;
        assert_eq!(bodies(json), []);
    }

    #[test]
    fn a_body_is_held_to_what_a_value_can_hold() {
        let depth = |n: usize| {
            let body = format!("{}{}", "[".repeat(n), "]".repeat(n));
            format!(r#"{{"requests": [{{"body": {body}}}]}}"#)
        };
        // Three levels are the batch's own: 127 in all pass, as serde_json allows.
        assert_eq!(bodies(&depth(124)).len(), 1);
        assert_eq!(refused(&depth(125)), "nested too deep");
        let body = |s: &str| format!(r#"{{"requests": [{{"body": "{s}"}}]}}"#);
        for lone in [
            r"\ud800",
            r"\udc00",
            r"\ud800x",
            r"\ud800\n",
            r"\ud800\u0041",
            r"\ud800é",
        ] {
            assert!(refused(&body(lone)).contains("surrogate"), "{lone}");
        }
        for fine in [r"\ud83d\ude00", r"\\ud800", r#"\u00e9\"[{"#, "é"] {
            assert_eq!(bodies(&body(fine)).len(), 1, "{fine}");
        }
    }

    #[test]
    fn the_position_of_a_refusal_is_where_it_happened() {
        let at = |json: &[u8]| match read(json) {
            Err(Problem::InvalidJson { line, column, .. }) => (line, column),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            at(b"{\"requests\": [\n  {\"body\": \"\\udc00\"}]}"),
            (2, 13)
        );
        // Not UTF-8, inside a body that is never made a value.
        assert_eq!(
            at(b"{\"requests\": [\n  {\"body\": [\"a\xff\"]}]}"),
            (2, 15)
        );
    }
}
