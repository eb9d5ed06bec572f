//! Batch documents: reading one (`batch::document::read`) and checking its items
//! (`batch::parse`).
//!
//! The input: one byte for `max_requests`, then the body. Whatever serde_json takes as a
//! `Value` must not be called invalid JSON; what is read must be that `Value` with each
//! item's `body` set aside as written; a 413 only for more items than allowed; and a batch
//! that passes is runnable: ids unique, dependencies known and acyclic, paths normal.

#![no_main]

use std::fmt;

use libfuzzer_sys::fuzz_target;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;
use sluice::batch::document::{self, Document};
use sluice::batch::{Item, parse};
use sluice::problem::{Limit, Problem};

const BATCH_PATH: &str = "/batch";

fuzz_target!(|data: &[u8]| {
    let Some((&first, body)) = data.split_first() else {
        return;
    };
    let max = usize::from(first % 8) + 1;
    let read = document::read(body, max);
    if let Ok(doc) = &read {
        check_document(body, doc);
    }
    if let Ok(value) = &plain_value(body) {
        check_against_value(body, max, value, &read);
    }
    match (parse(body, BATCH_PATH, max), &read) {
        (Ok(items), Ok(_)) => check_items(&items, max),
        (Ok(_), Err(e)) => panic!("the items pass, but reading refused: {e:?}"),
        (Err(e), Ok(_)) => assert!(
            matches!(e, Problem::BatchInvalid { .. } | Problem::TooLarge(_)),
            "read, then refused as {e:?}"
        ),
        (Err(e), Err(r)) => assert_eq!(&e, r, "refused as reading refused"),
    }
    if let Err(e) = &read {
        check_refusal(e, max);
    }
});

/// What is read is JSON, and each body is a piece of the input, itself JSON.
fn check_document(body: &[u8], doc: &Document<'_>) {
    serde_json::from_slice::<IgnoredAny>(body).expect("read, but not JSON");
    let range = body.as_ptr_range();
    for raw in doc.bodies.iter().flatten() {
        let text = raw.get().as_bytes();
        assert!(
            range.contains(&text.as_ptr()) && text.len() <= body.len(),
            "a body that is not the input's own text"
        );
        serde_json::from_str::<IgnoredAny>(raw.get()).expect("a body that is not JSON");
    }
}

/// Read as serde_json reads a `Value`, but for the bodies, set aside as written.
fn check_against_value(body: &[u8], max: usize, value: &Value, read: &Result<Document, Problem>) {
    let most = most_requests(body);
    match read {
        Ok(doc) => {
            assert!(most <= max, "{most} requests read, at most {max} allowed");
            let mut expected = value.clone();
            let items = expected.get_mut("requests").and_then(Value::as_array_mut);
            for (i, item) in items.into_iter().flatten().enumerate() {
                let Some(item) = item.as_object_mut() else {
                    continue;
                };
                if let Some(b) = item.get_mut("body") {
                    let kept = doc.bodies.get(i).copied().flatten();
                    let kept: Value = kept.map_or(Value::Null, |raw| {
                        plain_value(raw.get().as_bytes()).expect("a body a Value can hold")
                    });
                    assert_eq!(*b, kept, "the body of item {i}");
                    *b = Value::Null;
                }
            }
            assert_eq!(doc.value, expected);
        }
        Err(Problem::TooLarge(Limit::Batch { .. })) => {
            assert!(most > max, "413, but {most} requests for {max}")
        }
        Err(Problem::BatchInvalid { errors }) => {
            assert!(
                errors.len() == 1 && errors[0].field.is_empty(),
                "{errors:?}"
            )
        }
        Err(e) => panic!("serde_json reads a Value, but the batch is refused: {e:?}"),
    }
}

/// A passing batch can be run as it is.
fn check_items(items: &[Item<'_>], max: usize) {
    assert!((1..=max).contains(&items.len()), "{} items", items.len());
    let mut ids = std::collections::HashSet::new();
    for item in items {
        assert!(!item.id.is_empty());
        assert!(ids.insert(&item.id), "two items with the id {:?}", item.id);
        assert!(item.depends_on.iter().all(|&d| d < items.len()));
        let path = item.uri.path();
        assert!(path.starts_with('/') && path != BATCH_PATH, "{}", item.uri);
        assert!(
            matches!(sluice::path::normal(path), Ok(None)),
            "an item's path not in normal form: {}",
            item.uri
        );
        if let Some(raw) = item.body {
            serde_json::from_str::<&RawValue>(raw.get()).expect("a body that is not JSON");
        }
    }
    assert!(acyclic(items), "a dependency cycle passed");
}

/// Kahn's algorithm: every item can run once those it waits for have.
fn acyclic(items: &[Item<'_>]) -> bool {
    let mut waiting: Vec<usize> = items.iter().map(|i| i.depends_on.len()).collect();
    let mut ready: Vec<usize> = (0..items.len()).filter(|&i| waiting[i] == 0).collect();
    let mut done = 0;
    while let Some(i) = ready.pop() {
        done += 1;
        for (j, item) in items.iter().enumerate() {
            for _ in item.depends_on.iter().filter(|&&d| d == i) {
                waiting[j] -= 1;
                if waiting[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    done == items.len()
}

/// A refusal is one of the three a batch body can get, its errors JSON pointers.
fn check_refusal(e: &Problem, max: usize) {
    match e {
        Problem::InvalidJson { .. } => {}
        Problem::TooLarge(Limit::Batch { max: m }) => assert_eq!(*m, max),
        Problem::BatchInvalid { errors } => {
            assert!((1..=50).contains(&errors.len()));
            for e in errors {
                assert!(e.field.is_empty() || e.field.starts_with('/'), "{e:?}");
            }
        }
        other => panic!("a batch body refused as {other:?}"),
    }
}

/// `bytes` as a `Value`, read the plain way: serde_json's own reader takes an object whose one
/// key is `$serde_json::private::RawValue` for the text it holds, which no client means.
fn plain_value(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = de.deserialize_any(Plain)?;
    de.end().map(|()| value)
}

struct Plain;

impl<'de> serde::de::DeserializeSeed<'de> for Plain {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<Value, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Plain {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut list = Vec::new();
        while let Some(v) = seq.next_element_seed(Plain)? {
            list.push(v);
        }
        Ok(Value::Array(list))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut members = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            members.insert(key, map.next_value_seed(Plain)?);
        }
        Ok(Value::Object(members))
    }
}

/// The most items of any `requests` member of the top-level object (a later duplicate
/// replaces an earlier one, but each is read); 0 if there is none.
fn most_requests(body: &[u8]) -> usize {
    let mut de = serde_json::Deserializer::from_slice(body);
    de.deserialize_any(Top).unwrap_or(0)
}

struct Top;

impl<'de> Visitor<'de> for Top {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a batch")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<usize, A::Error> {
        let mut most = 0;
        while let Some(key) = map.next_key::<String>()? {
            if key == "requests" {
                most = most.max(map.next_value::<Count>()?.0);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(most)
    }
}

/// The length of an array; 0 for anything else.
struct Count(usize);

impl<'de> serde::Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Count, D::Error> {
        struct Len;
        impl<'de> Visitor<'de> for Len {
            type Value = usize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("anything")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
                let mut n = 0;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(n)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<usize, A::Error> {
                IgnoredAny.visit_map(map).map(|_| 0)
            }
            fn visit_str<E>(self, _: &str) -> Result<usize, E> {
                Ok(0)
            }
            fn visit_bool<E>(self, _: bool) -> Result<usize, E> {
                Ok(0)
            }
            fn visit_i64<E>(self, _: i64) -> Result<usize, E> {
                Ok(0)
            }
            fn visit_u64<E>(self, _: u64) -> Result<usize, E> {
                Ok(0)
            }
            fn visit_f64<E>(self, _: f64) -> Result<usize, E> {
                Ok(0)
            }
            fn visit_unit<E>(self) -> Result<usize, E> {
                Ok(0)
            }
        }
        de.deserialize_any(Len).map(Count)
    }
}
