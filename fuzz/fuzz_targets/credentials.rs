//! Credentials: the key a request presents (`pipeline::presented_key`), and a client
//! certificate's identity (`ClientCert::of`).
//!
//! The input's first byte says what the rest is: `H`, a head's field lines (`Name: value`);
//! `C`, a certificate's DER; anything else, a key and the way a client sends it. Any headers
//! give a key that is not empty, or none; a key sent in any of the three ways, the scheme
//! spelled in any case, comes back as sent; any DER gives an identity the certificate holds,
//! or its digest in hex.

#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use sluice::pipeline::{ClientCert, X_API_KEY, presented_key};
use sluice_fuzz::headers;

/// A key, sent one way, among other headers.
#[derive(Debug, Arbitrary)]
struct Sent<'a> {
    way: Way,
    noise: Vec<headers::Line>,
    key: &'a [u8],
}

#[derive(Debug, Arbitrary)]
enum Way {
    /// `Authorization: <scheme> <key>`, the scheme's letters in any case (bit i: letter i
    /// upper), with spaces around the key.
    Bearer {
        case: u8,
        before: u8,
        after: u8,
    },
    /// `Authorization: Basic base64(key:password)`.
    Basic {
        case: u8,
        password: Vec<u8>,
    },
    XApiKey,
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'H', lines)) => any_headers(&headers::parse(lines)),
        Some((b'C', der)) => cert(der),
        _ => {
            let Ok(input) = Sent::arbitrary_take_rest(Unstructured::new(data)) else {
                return;
            };
            sluice_fuzz::show(&input);
            sent(input.key, &input.way, &input.noise);
        }
    }
});

fn any_headers(map: &HeaderMap) {
    let Some(key) = presented_key(map) else {
        return;
    };
    assert!(!key.is_empty(), "an empty key");
    // Looked up by digest, so the same map gives the same key every time.
    assert_eq!(presented_key(map), Some(key));
}

fn sent(key: &[u8], way: &Way, noise: &[headers::Line]) {
    let key = key.trim_ascii();
    let (name, value) = match way {
        Way::Bearer {
            case,
            before,
            after,
        } => {
            let spaces = |n: u8| " ".repeat(usize::from(n % 4));
            let mut value = spelled("bearer", *case);
            value.push(b' ');
            value.extend(spaces(*before).bytes());
            value.extend(key);
            value.extend(spaces(*after).bytes());
            (AUTHORIZATION, value)
        }
        Way::Basic { case, password } => {
            if key.contains(&b':') {
                return; // the user name ends at the first colon
            }
            let mut value = spelled("basic", *case);
            value.push(b' ');
            let user_pass = [key, b":", password].concat();
            value.extend(STANDARD.encode(user_pass).bytes());
            (AUTHORIZATION, value)
        }
        Way::XApiKey => (X_API_KEY.clone(), key.to_vec()),
    };
    let Ok(value) = HeaderValue::from_bytes(&value) else {
        return; // not something a client can send
    };
    let mut map = headers::map(noise, &["x-other", "x-api-key"]);
    if name == X_API_KEY {
        map.remove(AUTHORIZATION);
        map.remove(&X_API_KEY);
    }
    map.insert(name, value);
    let expected = (!key.is_empty()).then_some(key);
    assert_eq!(presented_key(&map).as_deref(), expected, "{map:?}");
}

/// `scheme` with letter i in upper case where bit i of `case` is set.
fn spelled(scheme: &str, case: u8) -> Vec<u8> {
    scheme
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            if case >> i & 1 == 1 {
                b.to_ascii_uppercase()
            } else {
                b
            }
        })
        .collect()
}

fn cert(der: &[u8]) {
    let cert = ClientCert::of(&CertificateDer::from(der));
    let digest: [u8; 32] = Sha256::digest(der).into();
    assert_eq!(cert.sha256, digest);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let identity = cert.identity.as_bytes();
    assert!(!identity.is_empty());
    // A name from the certificate is written in it; else the digest stands in.
    assert!(
        *cert.identity == *hex || der.windows(identity.len()).any(|w| w == identity),
        "the identity {:?} is not in the certificate",
        cert.identity
    );
}
