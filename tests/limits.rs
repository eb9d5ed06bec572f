//! Rate limits through the proxy: the published rule per key, the headers, 429, shadow mode,
//! per-route and per-key policies, and the guard against guessing keys.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;

/// A policy small enough to wait out: 5 back to back, 1/s, at most 8 in any 2 s.
const SMALL: &str = "rate = \"1/s\"\nburst = 5\nwindow = \"2s\"\nwindow_requests = 8";

/// Sluice in front of `up` with `policy` as the default, on a clock that moves only when the
/// test says: every count is exact, however slow the machine.
fn limited(up: &Upstream, policy: &str) -> Builder {
    Sluice::builder()
        .upstream(up)
        .policy("default", policy)
        .manual_clock()
}

#[tokio::test]
async fn a_fresh_key_sends_100_back_to_back_and_the_101st_gets_429_with_all_headers() {
    let up = spawn_upstream().await;
    let sluice = spawn_default(&up.url());
    for i in 1..=100u32 {
        let res = send(sluice.addr, keyed("/", "alice")).await;
        assert_eq!(res.status, 200, "request {i}");
        assert_eq!(
            res.header("ratelimit-policy"),
            r#""default";q=100;w=60, "default.rate";q=100;w=100"#
        );
        let left = 100 - i;
        assert!(
            res.header("ratelimit")
                .starts_with(&format!(r#""default";r={left};t="#)),
            "{}",
            res.header("ratelimit")
        );
    }
    let res = send(sluice.addr, keyed("/", "alice")).await;
    assert_eq!(res.status, 429);
    assert_eq!(res.header("content-type"), "application/problem+json");
    let retry: u64 = res.header("retry-after").parse().unwrap();
    assert!(
        (60..=75).contains(&retry),
        "retry-after {retry}: the 60 s window, at most its documented lateness"
    );
    assert!(
        res.header("ratelimit").starts_with(r#""default";r=0;t="#),
        "{}",
        res.header("ratelimit")
    );
    assert!(!res.header("ratelimit-policy").is_empty());
    let body = res.json();
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["retry_after"], retry);
    assert_eq!(
        body["violated-policies"],
        serde_json::json!(["default", "default.rate"])
    );
    assert_eq!(
        up.seen().len(),
        100,
        "the refused request never reached the upstream"
    );

    let other = send(sluice.addr, keyed("/", "bob")).await;
    assert_eq!(other.status, 200, "another key is unaffected");
    assert!(other.header("ratelimit").starts_with(r#""default";r=99;"#));
}

#[tokio::test]
async fn waiting_retry_after_then_retrying_succeeds() {
    let up = spawn_upstream().await;
    let sluice = limited(&up, SMALL).start();
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..6).map(|_| send(sluice.addr, keyed("/", "k"))))
            .await
            .iter()
            .map(|r| r.status.as_u16())
            .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    let refused = send(sluice.addr, keyed("/", "k")).await;
    assert_eq!(refused.status, 429);
    let wait: u64 = refused.header("retry-after").parse().unwrap();
    assert!(wait >= 1);
    sluice.advance(Duration::from_secs(wait));
    assert_eq!(send(sluice.addr, keyed("/", "k")).await.status, 200);
}

#[tokio::test]
async fn the_client_ip_is_the_key_when_no_credential_is_presented() {
    let up = spawn_upstream().await;
    let sluice = limited(&up, SMALL).start();
    for _ in 0..5 {
        assert_eq!(get(sluice.addr, "/").await.status, 200);
    }
    assert_eq!(get(sluice.addr, "/").await.status, 429);
    assert_eq!(
        send(sluice.addr, keyed("/", "with-a-key")).await.status,
        200
    );
}

#[tokio::test]
async fn a_header_keyed_policy_counts_per_header_value() {
    let up = spawn_upstream().await;
    let policy = format!("{SMALL}\nkey = \"header:x-tenant\"");
    let sluice = limited(&up, &policy).start();
    let tenant = |t: &str| {
        request(Method::GET, "/")
            .header("x-tenant", t)
            .body(Full::<Bytes>::default())
            .unwrap()
    };
    for _ in 0..5 {
        assert_eq!(send(sluice.addr, tenant("a")).await.status, 200);
    }
    assert_eq!(send(sluice.addr, tenant("a")).await.status, 429);
    assert_eq!(send(sluice.addr, tenant("b")).await.status, 200);
}

#[tokio::test]
async fn shadow_mode_reports_but_never_refuses() {
    let up = spawn_upstream().await;
    let policy = format!("{SMALL}\nmode = \"shadow\"");
    let sluice = limited(&up, &policy).start();
    for _ in 0..7 {
        assert_eq!(send(sluice.addr, keyed("/", "k")).await.status, 200);
    }
    let res = send(sluice.addr, keyed("/", "k")).await;
    assert_eq!(res.status, 200);
    assert!(
        res.header("ratelimit").contains("r=0"),
        "{}",
        res.header("ratelimit")
    );
    assert_eq!(up.seen().len(), 8);
}

#[tokio::test]
async fn header_styles_x_ratelimit_both_and_none() {
    let up = spawn_upstream().await;
    for (style, ietf, x) in [
        ("x-ratelimit", false, true),
        ("both", true, true),
        ("none", false, false),
    ] {
        let headers = format!("[headers]\nratelimit = \"{style}\"");
        let sluice = limited(&up, SMALL).toml(&headers).start();
        let res = send(sluice.addr, keyed("/", "k")).await;
        assert_eq!(res.headers.contains_key("ratelimit"), ietf, "{style}");
        assert_eq!(res.headers.contains_key("x-ratelimit-limit"), x, "{style}");
        if x {
            // The tightest limit: the burst of 5 with 4 left.
            assert_eq!(res.header("x-ratelimit-limit"), "5");
            assert_eq!(res.header("x-ratelimit-remaining"), "4");
            assert!(res.header("x-ratelimit-reset").parse::<u64>().unwrap() <= 1);
        }
    }
}

#[tokio::test]
async fn a_route_without_a_policy_is_never_limited_and_has_no_headers() {
    let up = spawn_upstream().await;
    let sluice = limited(&up, SMALL)
        .route("/free", "policy = \"none\"")
        .route("/", "")
        .start();
    for _ in 0..10 {
        let res = send(sluice.addr, keyed("/free", "k")).await;
        assert_eq!(res.status, 200);
        assert!(!res.headers.contains_key("ratelimit"));
    }
    assert_eq!(send(sluice.addr, keyed("/limited", "k")).await.status, 200);
}

#[tokio::test]
async fn the_limit_is_checked_before_the_body() {
    let up = spawn_upstream().await;
    let sluice = limited(&up, SMALL).start();
    for _ in 0..5 {
        send(sluice.addr, keyed("/", "k")).await;
    }
    let wrong_type = request(Method::POST, "/")
        .header("x-api-key", "k")
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from_static(b"hi")))
        .unwrap();
    assert_eq!(
        send(sluice.addr, wrong_type).await.status,
        429,
        "429 wins over 415"
    );
}

/// Keys `small-key` (the default policy, a burst of 5) and `partner-key` (a policy of its own,
/// a burst of 20), a route that needs a scope neither has, and a guard of 3 failed keys per
/// client address; 1/m each, on a clock that never moves.
fn api_keys(up: &Upstream) -> Sluice {
    Sluice::builder()
        .upstream(up)
        .policy("default", "rate = \"1/m\"\nburst = 5")
        .policy("partner", "rate = \"1/m\"\nburst = 20")
        .policy("auth_failures", "rate = \"1/m\"\nburst = 3\nkey = \"ip\"")
        .key("small", "small-key", "scopes = [\"read\"]")
        .key(
            "partner",
            "partner-key",
            "scopes = [\"read\"]\npolicy = \"partner\"",
        )
        .route("/admin", "scopes = [\"admin\"]")
        .route("/", "")
        .manual_clock()
        .start()
}

#[tokio::test]
async fn a_key_with_its_own_policy_gets_that_policy() {
    let up = spawn_upstream().await;
    let sluice = api_keys(&up);
    let passed = |key: &'static str| async move {
        let mut n = 0;
        while send(sluice.addr, keyed("/", key)).await.status == 200 {
            n += 1;
        }
        n
    };
    assert_eq!(passed("small-key").await, 5);
    assert_eq!(passed("partner-key").await, 20);
}

#[tokio::test]
async fn requests_refused_with_403_cost_nothing() {
    let up = spawn_upstream().await;
    let sluice = api_keys(&up);
    for _ in 0..10 {
        assert_eq!(
            send(sluice.addr, keyed("/admin", "small-key")).await.status,
            403
        );
    }
    for i in 0..5 {
        assert_eq!(
            send(sluice.addr, keyed("/", "small-key")).await.status,
            200,
            "request {i}"
        );
    }
}

#[tokio::test]
async fn guessing_keys_is_slowed_per_client_ip_even_for_a_right_guess() {
    let up = spawn_upstream().await;
    let sluice = api_keys(&up);
    for _ in 0..3 {
        assert_eq!(send(sluice.addr, keyed("/", "guess")).await.status, 401);
    }
    let res = send(sluice.addr, keyed("/", "guess")).await;
    assert_eq!(res.status, 429);
    assert!(res.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(
        res.json()["violated-policies"],
        serde_json::json!(["auth_failures"])
    );
    let right = send(sluice.addr, keyed("/", "small-key")).await;
    assert_eq!(
        right.status, 429,
        "while guessing is blocked, even a valid key is not looked at"
    );
    assert!(up.seen().is_empty());
}
