use std::time::Duration;

use super::*;

fn upstream() -> Overrides {
    Overrides {
        upstreams: vec!["http://127.0.0.1:3000".into()],
        ..Overrides::default()
    }
}

fn invalid(source: &str) -> Vec<Invalid> {
    Config::parse(source, &upstream())
        .expect_err("config should be refused")
        .invalid()
        .to_vec()
}

#[test]
fn no_file_gives_the_published_rules() {
    let c = Config::defaults(&upstream()).unwrap();
    assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.server.request_timeout, Duration::from_secs(60));
    assert_eq!(c.server.timeout_status, StatusCode::REQUEST_TIMEOUT);
    let p = c.policy("default").unwrap();
    let (rate, burst) = p.rate.unwrap();
    assert_eq!(
        (rate.count, rate.per, burst),
        (1, Duration::from_secs(1), 100)
    );
    assert_eq!(p.window, Some((Duration::from_secs(60), 100)));
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].path, "/");
    assert_eq!(c.routes[0].policy, Some(0));
    assert_eq!(c.routes[0].max_body, 1 << 20);
    assert_eq!(c.upstreams[0].name, "api");
    assert_eq!(
        c.upstreams[0].targets[0].addr,
        Some("127.0.0.1:3000".parse().unwrap())
    );
}

#[test]
fn no_upstream_at_all_is_an_error() {
    let e = Config::defaults(&Overrides::default()).unwrap_err();
    assert_eq!(e.invalid()[0].key, "upstreams");
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let e = invalid("[server]\nlisten = \"0.0.0.0:8080\"\nlisten_port = 8080\n");
    assert_eq!(e[0].line, Some(3));
    assert!(e[0].message.contains("listen_port"), "{}", e[0]);
}

#[test]
fn bad_value_names_the_key_and_line() {
    let e = invalid(
        "[policies.default]\nrate = \"1/s\"\nburst = 100\n\n[policies.slow]\nrate = \"fast\"\nburst = 1\n",
    );
    assert_eq!(e[0].key, "policies.slow.rate");
    assert_eq!(e[0].line, Some(6));
    assert!(e[0].message.contains("invalid rate"), "{}", e[0]);
}

#[test]
fn a_route_naming_a_missing_upstream_or_policy_is_refused() {
    let e = invalid("[[routes]]\npath = \"/v1\"\nupstream = \"nope\"\npolicy = \"gold\"\n");
    let keys: Vec<&str> = e.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["routes[0].upstream", "routes[0].policy"]);
    assert_eq!(e[0].line, Some(3));
    assert_eq!(e[1].line, Some(4));
}

#[test]
fn a_path_that_no_request_could_match_is_refused() {
    let e = invalid("[[routes]]\npath = \"/v1/./a\"\n[batch]\npath = \"//batch\"\n");
    let keys: Vec<&str> = e.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["routes[0].path", "batch.path"]);
    assert_eq!(e[0].line, Some(2));
    assert!(e[0].message.contains("\"/v1/a\""), "{}", e[0]);
    assert!(e[1].message.contains("\"/batch\""), "{}", e[1]);
}

#[test]
fn a_policy_needs_complete_pairs() {
    let e = invalid("[policies.half]\nrate = \"1/s\"\n");
    assert_eq!(e[0].key, "policies.half");
    assert_eq!(e[0].line, Some(1));
    let e = invalid("[policies.empty]\nmode = \"shadow\"\n");
    assert!(e[0].message.contains("needs rate"), "{}", e[0]);
}

#[test]
fn a_default_policy_table_replaces_the_builtin_whole() {
    let c = Config::parse(
        "[policies.default]\nwindow = \"10s\"\nwindow_requests = 5\n",
        &upstream(),
    )
    .unwrap();
    let p = c.policy("default").unwrap();
    assert_eq!(p.rate, None);
    assert_eq!(p.window, Some((Duration::from_secs(10), 5)));
}

#[test]
fn routes_resolve_names_and_overrides() {
    let src = r#"
[server]
request_timeout = "30s"
trusted_proxies = ["10.0.0.0/8", "::1"]

[upstreams.api]
targets = ["http://127.0.0.1:3000", "http://localhost:3001"]

[[routes]]
path = "/v1/reports"
methods = ["get", "POST"]
policy = "none"
max_body = "64KiB"
content_types = ["*"]
request_timeout = "5s"

[[routes]]
path = "/"
"#;
    let c = Config::parse(src, &Overrides::default()).unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 2);
    let r = &c.routes[0];
    assert_eq!(r.methods, [Method::GET, Method::POST]);
    assert_eq!(
        (r.policy, r.max_body, r.content_types.clone()),
        (None, 65536, None)
    );
    assert_eq!(r.request_timeout, Duration::from_secs(5));
    assert_eq!(c.routes[1].request_timeout, Duration::from_secs(30));
    assert_eq!(c.upstreams[0].targets[1].addr, None);
    assert_eq!(c.upstreams[0].targets[1].host, "localhost");
}

#[test]
fn overrides_replace_file_values() {
    let src = "[server]\nlisten = \"127.0.0.1:1\"\n[upstreams.backend]\ntargets = [\"http://127.0.0.1:1\"]\n";
    let o = Overrides {
        listen: Some("127.0.0.1:2".into()),
        admin_listen: Some(String::new()),
        upstreams: vec!["http://127.0.0.1:4000".into()],
        workers: Some(3),
        ..Overrides::default()
    };
    let c = Config::parse(src, &o).unwrap();
    assert_eq!(c.server.listen.port(), 2);
    assert_eq!(c.server.admin_listen, None);
    assert_eq!(c.server.workers, 3);
    assert_eq!(c.upstreams[0].name, "backend");
    assert_eq!(c.upstreams[0].targets[0].port, 4000);
}

#[test]
fn zero_timeouts_tiny_heads_and_no_keys_are_refused_at_their_line() {
    let e = invalid(
        "[server]\nheader_read_timeout = \"0s\"\nrequest_timeout = \"0ms\"\nidle_timeout = \"0s\"\nmax_header_bytes = 0\nmax_keys = 0\n[[routes]]\npath = \"/\"\nrequest_timeout = \"0s\"\n[upstreams.api]\ntargets = [\"http://127.0.0.1:1\"]\nconnect_timeout = \"0s\"\n",
    );
    let got: Vec<(&str, Option<usize>)> = e.iter().map(|i| (i.key.as_str(), i.line)).collect();
    assert_eq!(
        got,
        [
            ("server.header_read_timeout", Some(2)),
            ("server.request_timeout", Some(3)),
            ("server.idle_timeout", Some(4)),
            ("server.max_header_bytes", Some(5)),
            ("server.max_keys", Some(6)),
            ("routes[0].request_timeout", Some(9)),
            ("upstreams.api.connect_timeout", Some(12)),
        ]
    );
}

#[test]
fn a_policy_name_that_a_header_cannot_carry_is_refused() {
    let e = invalid("[policies.\"we\\\"ird\"]\nrate = \"1/s\"\nburst = 3\n");
    assert_eq!(e[0].key, "policies.we\"ird");
    assert!(e[0].message.contains("printable ASCII"), "{}", e[0]);
    for bad in ["", "caf\u{e9}", "a\\\\b"] {
        let e = invalid(&format!(
            "[policies.\"{bad}\"]\nrate = \"1/s\"\nburst = 3\n"
        ));
        assert!(
            e[0].message.contains("printable ASCII"),
            "{bad:?}: {}",
            e[0]
        );
    }
    let ok = "[policies.\"partner tier/2 gold-tier_2.v1\"]\nrate = \"1/s\"\nburst = 3\n";
    assert!(Config::parse(ok, &upstream()).is_ok());
}

#[test]
fn bad_targets_auth_keys_and_statuses_are_refused() {
    let src = r#"
[server]
timeout_status = 500
[upstreams.api]
targets = ["ftp://example.com"]
[auth]
mode = "api_keys"
[[auth.keys]]
name = "acme"
sha256 = "abc"
"#;
    let e = Config::parse(src, &Overrides::default()).unwrap_err();
    let keys: Vec<(&str, Option<usize>)> = e
        .invalid()
        .iter()
        .map(|i| (i.key.as_str(), i.line))
        .collect();
    assert_eq!(
        keys,
        [
            ("server.timeout_status", Some(3)),
            ("upstreams.api.targets", Some(5)),
            ("auth.keys[0].sha256", Some(10)),
        ]
    );
}

/// The key and line of every error `source` gets, with no flags.
fn located(source: &str) -> Vec<(String, Option<usize>)> {
    Config::parse(source, &Overrides::default())
        .expect_err("config should be refused")
        .invalid()
        .iter()
        .map(|i| (i.key.clone(), i.line))
        .collect()
}

fn at(key: &str, line: usize) -> (String, Option<usize>) {
    (key.to_string(), Some(line))
}

#[test]
fn zero_limits_and_empty_targets_name_their_line() {
    let src = r#"
[server]
max_connections = 0

[upstreams.api]
targets = []

[batch]
max_requests = 0
max_concurrency = 0
"#;
    assert_eq!(
        located(src),
        [
            at("server.max_connections", 3),
            at("upstreams.api.targets", 6),
            at("batch.max_requests", 9),
            at("batch.max_concurrency", 10),
        ]
    );
}

#[test]
fn a_missing_table_is_reported_at_the_key_that_needs_it() {
    let api = "[upstreams.api]\ntargets = [\"http://127.0.0.1:3000\"]\n";
    let keys = format!("{api}[auth]\nmode = \"api_keys\"\n");
    assert_eq!(located(&keys), [at("auth.keys", 4)]);
    let several = format!("{api}[upstreams.web]\ntargets = [\"http://127.0.0.1:3001\"]\n");
    assert_eq!(located(&several), [at("routes", 3)]);
    assert_eq!(
        located(""),
        [("upstreams".to_string(), None)],
        "nothing in the file to point at"
    );
}

#[test]
fn a_route_left_without_its_default_policy_names_the_route() {
    let src = "[upstreams.api]\ntargets = [\"http://127.0.0.1:3000\"]\n[policies.default]\nrate = \"1/s\"\n[[routes]]\npath = \"/v1\"\n";
    assert_eq!(
        located(src),
        [at("policies.default", 3), at("routes[0].policy", 6)]
    );
}

#[test]
fn values_that_would_be_silently_ignored_or_misread_are_refused() {
    let key = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
    let src = format!(
        r#"
[server]
workers = 1025
[upstreams.api]
targets = ["http://127.0.0.1:99999", "http://user:pw@h:1", "http://h:0"]
[[routes]]
path = "/admin"
scopes = ["admin"]
content_types = ["application/json; charset=utf-8"]
methods = ["GET", "FOO BAR"]
[batch]
max_body = 0
[headers]
request_id = "Content-Length"
[[auth.keys]]
name = "a"
sha256 = "{key}"
[[auth.keys]]
name = "a"
sha256 = "{}"
"#,
        key.to_uppercase()
    );
    assert_eq!(
        located(&src),
        [
            at("server.workers", 3),
            at("upstreams.api.targets", 5),
            at("upstreams.api.targets", 5),
            at("upstreams.api.targets", 5),
            at("routes[0].content_types", 9),
            at("routes[0].methods", 10),
            at("batch.max_body", 12),
            at("headers.request_id", 14),
            at("auth.keys[1].name", 19),
            at("auth.keys[1].sha256", 20),
        ]
    );
}

#[test]
fn a_request_id_cannot_take_the_name_of_a_header_sluice_writes() {
    // A client's X-Real-IP would pass as the request id it sent, and reach the upstream.
    for name in [
        "X-Real-IP",
        "x-forwarded-for",
        "x-sluice-client",
        "RateLimit",
        "retry-after",
    ] {
        let src = format!(
            "[upstreams.api]\ntargets = [\"http://a:1\"]\n[headers]\nrequest_id = \"{name}\"\n"
        );
        assert_eq!(located(&src), [at("headers.request_id", 4)], "{name}");
    }
}

#[test]
fn scopes_without_any_key_are_refused() {
    let src = "[upstreams.api]\ntargets = [\"http://127.0.0.1:3000\"]\n[[routes]]\npath = \"/admin\"\nscopes = [\"admin\"]\n";
    assert_eq!(located(src), [at("routes[0].scopes", 5)]);
}

#[test]
fn a_number_too_large_to_read_names_the_key_written_on_its_line() {
    let e = invalid("[server]\nworkers = 99999999999999999999999\n");
    assert_eq!((e[0].key.as_str(), e[0].line), ("server.workers", Some(2)));
    let e = invalid("[policies.default]\nrate = \"1/s\"\nburst = 99999999999999999999\n");
    assert_eq!(e[0].key, "policies.default.burst");
    let routes = "[[routes]]\npath = \"/a\"\n[[routes]]  # b\npath = \"/b\"\nmax_body = 99999999999999999999\n";
    assert_eq!(invalid(routes)[0].key, "routes[1].max_body");
    // A key given twice is named the same way.
    let e = invalid("[server]\nworkers = 1\nworkers = 2\n");
    assert_eq!((e[0].key.as_str(), e[0].line), ("server.workers", Some(3)));
}

#[test]
fn a_syntax_error_without_a_message_of_its_own_still_says_what_is_wrong() {
    // Found by the `config` fuzz target: a bare CR or a NUL, which the TOML parser reports
    // with an empty message, left `sluice check` printing only "line 1: ".
    for (source, line) in [("\r", 1), ("# a comment\0", 1), ("[server]\n# \0", 2)] {
        let e = invalid(source);
        assert_eq!(e[0].message, "invalid TOML", "{source:?}");
        assert_eq!(e[0].line, Some(line), "{source:?}");
    }
}

#[test]
fn the_window_limit_names_the_real_maximum() {
    let n = crate::limiter::Window::MAX_REQUESTS;
    let src = |n: u32| format!("[policies.default]\nwindow = \"60s\"\nwindow_requests = {n}\n");
    assert!(Config::parse(&src(n), &upstream()).is_ok());
    let e = invalid(&src(n + 1));
    assert!(e[0].message.contains(&n.to_string()), "{}", e[0]);
}

#[test]
fn a_redis_store_is_checked_key_by_key() {
    let found = located(
        "[store]\nkind = \"redis\"\nurl = \"http://cache:6379\"\ntimeout = \"0s\"\n\
         sync = \"lease\"\nlease = 0\nlease_ttl = \"0s\"\n",
    );
    for expected in [
        at("store.url", 3),
        at("store.timeout", 4),
        at("store.lease", 6),
        at("store.lease_ttl", 7),
    ] {
        assert!(found.contains(&expected), "{expected:?} in {found:?}");
    }
    assert!(
        found
            .iter()
            .any(|(k, l)| k == "store.key_secret" && l.is_none())
    );
    let both = located(
        "[store]\nkind = \"redis\"\nkey_secret = \"s\"\nurl = \"redis://a:1\"\n\
         cluster = [\"redis://b:1\"]\n",
    );
    assert_eq!(both[0], at("store.cluster", 5));
    let mode = invalid("[store]\nkind = \"mongo\"\n");
    assert_eq!(
        (mode[0].key.as_str(), mode[0].line),
        ("store.kind", Some(2))
    );
}

#[test]
fn a_redis_store_takes_its_url_and_secret_from_the_environment() {
    let file = "[store]\nkind = \"redis\"\ncluster = [\"redis://10.0.0.1:6379\"]\n";
    let o = Overrides {
        store_url: Some("rediss://user:pw@cache.internal:6380/2".into()),
        store_key_secret: Some("s3cret".into()),
        ..upstream()
    };
    let c = Config::parse(file, &o).unwrap();
    let redis = c.store.redis.as_ref().unwrap();
    assert_eq!(
        redis.servers,
        crate::limiter::redis::Servers::One("rediss://user:pw@cache.internal:6380/2".into())
    );
    assert_eq!(redis.key_secret, b"s3cret");
    assert_eq!(redis.timeout, Duration::from_millis(20));
    let summary = c.summary();
    assert!(
        summary.contains("store redis rediss://cache.internal:6380/2 (exact, on_error local)"),
        "{summary}"
    );
    assert!(!summary.contains("pw") && !format!("{o:?}").contains("s3cret"));
    let memory = Config::defaults(&upstream()).unwrap();
    assert!(memory.store.redis.is_none() && memory.summary().contains("store memory"));
}
