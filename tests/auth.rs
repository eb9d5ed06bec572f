//! API keys: with `auth.mode = "api_keys"` a request must present a listed key (401) with the
//! route's scopes (403); the upstream learns the key's name and, by default, the credential.

mod support;

use base64::Engine;
use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

#[tokio::test]
async fn no_key_gets_401_with_www_authenticate_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    for path in ["/v1/things", "/v1/write/things"] {
        let res = get_with(sluice.addr, path, &[]).await;
        assert_problem(&res, 401);
        assert!(
            res.header("www-authenticate").starts_with("Bearer"),
            "{:?}",
            res.headers
        );
    }
    // Empty or unusable credentials are no key at all.
    let bearer_empty = get_with(sluice.addr, "/", &[("authorization", "Bearer ")]).await;
    assert_problem(&bearer_empty, 401);
    let digest = get_with(sluice.addr, "/", &[("authorization", "Digest abc")]).await;
    assert_problem(&digest, 401);
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn an_unknown_key_gets_401_wherever_it_is_presented() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let wrong = "sk-not-a-key";
    let basic_wrong = basic(wrong, "");
    let bearer_wrong = bearer(wrong);
    // The hash itself is not a key.
    let bearer_hash = bearer(&sha256_hex(WRITER_KEY));
    let attempts = [
        ("authorization", bearer_wrong.as_str()),
        ("authorization", basic_wrong.as_str()),
        ("x-api-key", wrong),
        ("authorization", bearer_hash.as_str()),
    ];
    for (name, value) in attempts {
        let res = get_with(sluice.addr, "/v1/things", &[(name, value)]).await;
        assert_problem(&res, 401);
        assert!(
            !res.header("www-authenticate").is_empty(),
            "{name}: {value}"
        );
    }
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn a_key_by_bearer_basic_or_x_api_key_passes_and_the_upstream_learns_its_name() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let by_bearer = bearer(WRITER_KEY);
    let by_basic = basic(WRITER_KEY, "");
    let lower_bearer = format!("bearer {READER_KEY}");
    let cases = [
        ("authorization", by_bearer.as_str(), "writer"),
        ("authorization", by_basic.as_str(), "writer"),
        ("x-api-key", WRITER_KEY, "writer"),
        ("authorization", lower_bearer.as_str(), "reader"),
    ];
    for (name, value, key_name) in cases {
        let res = get_with(sluice.addr, "/v1/things", &[(name, value)]).await;
        assert_eq!(res.status, 200, "{name}: {value}: {:?}", res.body);
        let seen = up.last();
        assert_eq!(seen.headers["x-sluice-client"], key_name, "{value}");
        // Credentials are forwarded by default.
        assert_eq!(seen.headers[name], value);
    }
    assert_eq!(up.seen().len(), 4);
}

#[tokio::test]
async fn a_client_sent_x_sluice_client_never_reaches_the_upstream_as_sent() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let by_bearer = bearer(READER_KEY);
    let headers = [
        ("authorization", by_bearer.as_str()),
        ("x-sluice-client", "writer"),
    ];
    let res = get_with(sluice.addr, "/v1/things", &headers).await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    let values: Vec<_> = seen.headers.get_all("x-sluice-client").iter().collect();
    assert_eq!(values, ["reader"], "only the key's own name");

    // Without keys, a client-sent name is dropped, not passed on.
    let open = spawn_sluice(
        "[upstreams.api]\ntargets = [\"{upstream}\"]\n[[routes]]\npath = \"/\"\npolicy = \"none\"\n",
        &up.url(),
    );
    let res = get_with(open.addr, "/open", &[("x-sluice-client", "writer")]).await;
    assert_eq!(res.status, 200);
    let seen = up.last();
    assert_eq!(seen.uri, "/open");
    assert!(
        !seen.headers.contains_key("x-sluice-client"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test]
async fn with_forward_credentials_false_the_upstream_sees_no_credential_headers() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config("forward_credentials = false"), &up.url());
    let by_bearer = bearer(WRITER_KEY);
    let by_basic = basic(WRITER_KEY, "");
    let cases = [
        ("authorization", by_bearer.as_str()),
        ("authorization", by_basic.as_str()),
        ("x-api-key", WRITER_KEY),
    ];
    for (name, value) in cases {
        let res = get_with(sluice.addr, "/v1/things", &[(name, value)]).await;
        assert_eq!(res.status, 200, "{name}");
        let seen = up.last();
        assert!(!seen.headers.contains_key("authorization"), "{name}");
        assert!(!seen.headers.contains_key("x-api-key"), "{name}");
        assert_eq!(seen.headers["x-sluice-client"], "writer");
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn a_key_without_the_routes_scope_gets_403_naming_it_and_never_reaches_upstream() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    let req = request(Method::POST, "/v1/write/things")
        .header("content-type", "application/json")
        .header("x-api-key", READER_KEY)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = send(sluice.addr, req).await;
    let body = assert_problem(&res, 403);
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("\"write\""), "{detail}");
    assert!(res.headers.get("www-authenticate").is_none());
    assert!(up.seen().is_empty());

    // The same key on a route without scopes, and a key with the scope on this one, pass.
    let res = get_with(sluice.addr, "/v1/things", &[("x-api-key", READER_KEY)]).await;
    assert_eq!(res.status, 200);
    let res = get_with(
        sluice.addr,
        "/v1/write/things",
        &[("x-api-key", WRITER_KEY)],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().uri, "/v1/write/things");
    assert_eq!(up.seen().len(), 2);
}

#[tokio::test]
async fn a_path_spelled_differently_cannot_get_past_the_routes_scope() {
    let up = spawn_upstream().await;
    let sluice = spawn_sluice(&keys_config(""), &up.url());
    for path in [
        "//v1/write/things",
        "/./v1/write/things",
        "/v1//write/things",
        "/v1/x/../write/things",
        "/v1/%77rite/things",
        "/v1/x/%2e%2e/write/things",
        "/other/../v1/write/things",
    ] {
        let res = get_with(sluice.addr, path, &[("x-api-key", READER_KEY)]).await;
        assert_problem(&res, 403);
    }
    // A `%` that begins no escape could make one of what is decoded after it: refused.
    for path in ["/%%37%37rite/things", "/v1/%2%65%2%65/v1/write/things"] {
        let res = get_with(sluice.addr, path, &[("x-api-key", READER_KEY)]).await;
        assert_problem(&res, 400);
    }
    assert!(up.seen().is_empty());

    // The upstream gets the path the route and scope were decided on, query untouched.
    let res = get_with(
        sluice.addr,
        "/v1/x/../write//things?a=/../b",
        &[("x-api-key", WRITER_KEY)],
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(up.last().uri, "/v1/write/things?a=/../b");
}

#[tokio::test]
async fn with_auth_mode_none_keys_are_not_checked() {
    let up = spawn_upstream().await;
    // The same keys and scopes, but mode left at its default.
    let toml = keys_config("").replace("mode = \"api_keys\"", "");
    let sluice = spawn_sluice(&toml, &up.url());
    let unknown = bearer("sk-whatever");
    let cases: [&[(&str, &str)]; 3] = [
        &[],
        &[("authorization", unknown.as_str())],
        &[("x-api-key", READER_KEY)],
    ];
    for headers in cases {
        let res = get_with(sluice.addr, "/v1/write/things", headers).await;
        assert_eq!(res.status, 200, "{headers:?}");
        let seen = up.last();
        assert!(!seen.headers.contains_key("x-sluice-client"));
        for (name, value) in headers {
            assert_eq!(seen.headers[*name], *value, "a presented key is passed on");
        }
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn answers_that_cost_nothing_still_carry_the_clients_standing() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .policy("default", "rate = \"1/s\"\nburst = 5")
        .policy("partner", "rate = \"1/s\"\nburst = 7")
        .route("/v1/write/", "methods = [\"POST\"]\nscopes = [\"write\"]")
        .route("/v1/", "")
        .key("reader", READER_KEY, "scopes = [\"read\"]")
        .key(
            "partner",
            WRITER_KEY,
            "scopes = [\"read\"]\npolicy = \"partner\"",
        )
        .manual_clock()
        .start();
    let reader = [("x-api-key", READER_KEY)];
    let post = |key: &str| {
        request(Method::POST, "/v1/write/x")
            .header("x-api-key", key)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    };
    let answers = [
        (get_with(sluice.addr, "/v1/x", &[]).await, 401),
        (get_with(sluice.addr, "/v1/write/x", &reader).await, 405),
        (send(sluice.addr, post(READER_KEY)).await, 403),
    ];
    for (res, status) in &answers {
        assert_problem(res, *status);
        assert_eq!(res.header("ratelimit-policy"), r#""default";q=5;w=5"#);
        // Nothing was taken: the key still has its whole burst.
        assert!(
            res.header("ratelimit").starts_with(r#""default";r=5;"#),
            "{status}: {}",
            res.header("ratelimit")
        );
    }
    // A key with a policy of its own is shown that policy's standing.
    let res = send(sluice.addr, post(WRITER_KEY)).await;
    assert_problem(&res, 403);
    assert_eq!(res.header("ratelimit-policy"), r#""partner";q=7;w=7"#);
    let res = get_with(sluice.addr, "/other", &reader).await;
    assert_problem(&res, 404);
    assert!(
        res.headers.get("ratelimit").is_none(),
        "no route, no policy"
    );
    let res = get_with(sluice.addr, "/v1/x", &reader).await;
    assert_eq!(res.status, 200);
    assert!(res.header("ratelimit").starts_with(r#""default";r=4;"#));

    // Too many failed credentials: the guard's own standing comes with its 429.
    let mut last = None;
    for _ in 0..11 {
        last = Some(get_with(sluice.addr, "/v1/x", &[("x-api-key", "sk-guess")]).await);
    }
    let res = last.unwrap();
    assert_problem(&res, 429);
    assert!(
        res.header("ratelimit-policy").contains("auth_failures"),
        "{:?}",
        res.headers
    );
    assert!(
        res.header("ratelimit").contains(";r=0;"),
        "{:?}",
        res.headers
    );
}

#[tokio::test]
async fn a_401_shows_no_standing_under_a_policy_keyed_by_a_header_the_client_names() {
    let up = spawn_upstream().await;
    let sluice = Sluice::builder()
        .upstream(&up)
        .policy(
            "default",
            "rate = \"1/s\"\nburst = 5\nkey = \"header:x-tenant\"",
        )
        .key("reader", READER_KEY, "")
        .manual_clock()
        .start();
    let tenant = [("x-tenant", "victim")];
    let res = get_with(sluice.addr, "/x", &tenant).await;
    assert_problem(&res, 401);
    assert!(res.headers.get("ratelimit").is_none(), "{:?}", res.headers);
    let known = [("x-tenant", "victim"), ("x-api-key", READER_KEY)];
    let res = get_with(sluice.addr, "/x", &known).await;
    assert_eq!(res.status, 200);
    assert!(res.header("ratelimit").starts_with(r#""default";r=4;"#));
}
