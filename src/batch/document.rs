//! Reading a batch body: a `Value` of what the checks look at, and each item's `body` as
//! written, which is what goes upstream (a `Value` would re-spell numbers, and refuses those
//! past an f64, such as `1e400`).

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::json;
use crate::problem::{FieldError, Limit, Problem};

/// serde_json's nesting limit for a `Value`: 127 levels pass, the 128th does not.
const MAX_DEPTH: usize = 128;

/// A batch as read. In `value` each item's `body` is `null`; its text is in `bodies`, by
/// item index (an item without one may be past the end).
#[derive(Debug)]
pub struct Document<'a> {
    pub value: Value,
    pub bodies: Vec<Option<&'a RawValue>>,
}

/// Reads a batch body; anything that is not JSON is a 400. More than `max_requests` items is
/// a 413, found as soon as the item past the last is read: a body of many small items would
/// otherwise be built whole in memory first, hundreds of megabytes for 8 MiB of `{},`.
pub fn read(bytes: &[u8], max_requests: usize) -> Result<Document<'_>, Problem> {
    // The parse refuses what is not JSON or not UTF-8, in the bodies too.
    let mut state = State {
        bodies: Vec::new(),
        values: value_budget(max_requests),
        max_requests,
        refused: None,
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let reader = Reader {
        at: At::Top,
        state: &mut state,
    };
    let read = reader
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    let value = match (read, state.refused) {
        (Ok(value), _) => value,
        (Err(_), Some(Refused::TooMany)) => {
            return Err(Problem::TooLarge(Limit::Batch { max: max_requests }));
        }
        (Err(_), Some(Refused::TooBig)) => {
            return Err(Problem::BatchInvalid {
                errors: vec![FieldError {
                    field: String::new(),
                    message: format!("holds more JSON values than {max_requests} requests can use"),
                }],
            });
        }
        (Err(e), None) => return Err(json::invalid(e)),
    };
    holdable(bytes)?;
    Ok(Document {
        value,
        bodies: state.bodies,
    })
}

/// How many values (other than item bodies, which are not built) a batch of `max_requests`
/// may need: an item's few members and its headers, with room to spare, and `depends_on`
/// naming every other item.
fn value_budget(max_requests: usize) -> usize {
    max_requests.saturating_mul(max_requests.saturating_add(256))
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
                return Err(json::invalid_at(bytes, at, "nested too deep"));
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
            return Err(json::invalid_at(
                bytes,
                at,
                "lone surrogate in a \\u escape",
            ));
        }
        high = unit.is_some_and(|u| (0xD800..0xDC00).contains(&u));
    }
    Ok(())
}

fn hex(digits: &[u8]) -> Option<u16> {
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// What reading keeps and counts across the document.
struct State<'de> {
    bodies: Vec<Option<&'de RawValue>>,
    /// Values that may still be built.
    values: usize,
    max_requests: usize,
    refused: Option<Refused>,
}

#[derive(Clone, Copy)]
enum Refused {
    TooMany,
    TooBig,
}

impl State<'_> {
    fn count<E: Error>(&mut self) -> Result<(), E> {
        if self.values == 0 {
            self.refused = Some(Refused::TooBig);
            return Err(E::custom("too many values"));
        }
        self.values -= 1;
        Ok(())
    }
}

/// An item past `max_requests`: refused before any of it is read.
struct PastTheLast<'r, 'de>(&'r mut State<'de>);

impl<'de> DeserializeSeed<'de> for PastTheLast<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        self.0.refused = Some(Refused::TooMany);
        Err(D::Error::custom("too many requests"))
    }
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
    state: &'r mut State<'de>,
}

impl<'de> DeserializeSeed<'de> for Reader<'_, 'de> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl Reader<'_, '_> {
    /// A value with nothing inside, counted against the budget.
    fn leaf<E: Error>(self, v: Value) -> Result<Value, E> {
        self.state.count()?;
        Ok(v)
    }
}

impl<'de> Visitor<'de> for Reader<'_, 'de> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        self.leaf(Value::Null)
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        self.leaf(v.into())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.state.count()?;
        let mut list = Vec::new();
        loop {
            let at = match self.at {
                At::Requests => At::Item(list.len()),
                _ => At::Inside,
            };
            if let At::Item(i) = at
                && i == self.state.max_requests
            {
                // Ends the array, or refuses the item there unread.
                seq.next_element_seed(PastTheLast(&mut *self.state))?;
                return Ok(Value::Array(list));
            }
            let state = &mut *self.state;
            match seq.next_element_seed(Reader { at, state })? {
                Some(v) => list.push(v),
                None => return Ok(Value::Array(list)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.state.count()?;
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match (self.at, key.as_str()) {
                (At::Top, "requests") => {
                    // The last of duplicate members is the one read, as in a `Value`.
                    self.state.bodies.clear();
                    map.next_value_seed(Reader {
                        at: At::Requests,
                        state: &mut *self.state,
                    })?
                }
                (At::Item(i), "body") => {
                    let bodies = &mut self.state.bodies;
                    if bodies.len() <= i {
                        bodies.resize(i + 1, None);
                    }
                    bodies[i] = Some(map.next_value()?);
                    Value::Null
                }
                _ => map.next_value_seed(Reader {
                    at: At::Inside,
                    state: &mut *self.state,
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
        let doc = read(json.as_bytes(), 100).unwrap();
        doc.bodies.iter().map(|b| b.map(RawValue::get)).collect()
    }

    fn refused(json: &str) -> String {
        match read(json.as_bytes(), 100) {
            Err(Problem::InvalidJson { reason, .. }) => reason,
            other => panic!("expected a 400 for {json}, got {other:?}"),
        }
    }

    #[test]
    fn reading_stops_at_the_item_past_max_requests() {
        // The rest is never read: not even the JSON error at the end is seen.
        let json = format!("{{\"requests\": [{}{{\"id\": 1,", "{},".repeat(3));
        match read(json.as_bytes(), 3) {
            Err(Problem::TooLarge(Limit::Batch { max: 3 })) => {}
            other => panic!("expected a 413, got {other:?}"),
        }
        assert!(read(br#"{"requests": [{}, {}, {}]}"#, 3).is_ok());
    }

    #[test]
    fn values_past_what_max_requests_can_use_are_refused_before_they_are_built() {
        let budget = value_budget(2);
        let within = format!(
            r#"{{"requests": [{{"x": [{}]}}]}}"#,
            vec!["0"; budget - 4].join(",")
        );
        assert!(read(within.as_bytes(), 2).is_ok());
        let past = format!(
            r#"{{"requests": [{{"x": [{}]}}]}}"#,
            vec!["[]"; budget].join(",")
        );
        match read(past.as_bytes(), 2) {
            Err(Problem::BatchInvalid { errors }) => assert_eq!(errors[0].field, ""),
            other => panic!("expected a 422, got {other:?}"),
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
        let doc = read(json.as_bytes(), 100).unwrap();
        assert_eq!(doc.value["requests"][0]["body"], Value::Null);
        assert_eq!(doc.value["requests"][3]["body"], Value::Null);
        assert_eq!(doc.value["requests2"]["body"], 1);
    }

    #[test]
    fn an_object_shaped_like_a_serde_json_raw_value_stays_an_object() {
        let json = r#"{"requests": [{"id": {"$serde_json::private::RawValue": "\"a\""}}]}"#;
        let doc = read(json.as_bytes(), 100).unwrap();
        let id = &doc.value["requests"][0]["id"];
        assert_eq!(id.as_object().unwrap().len(), 1, "{id}");
        let json = r#"{"requests": [{"headers": {"$serde_json::private::RawValue": 1}}]}"#;
        assert!(read(json.as_bytes(), 100).unwrap().value["requests"][0]["headers"].is_object());
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
        let at = |json: &[u8]| match read(json, 100) {
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
