//! Config files: `Config::parse`, as `sluice check`, start-up and every reload run it.
//!
//! The input is the file's text. Any text gets a config or an error, never a panic; an error
//! names keys and lines that exist; a config is whole (every index it holds points at
//! something), and sluice can be built from it and reloaded with it.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sluice::config::{Config, ConfigError, Overrides};
use sluice::limiter::{MemoryStore, PolicyName};
use sluice::pipeline::App;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(source, &Overrides::default()) {
        Ok(config) => check_config(source, config),
        Err(e) => check_error(source, &e),
    }
    // As with `--upstream` and `--workers` given: the file's upstream is replaced.
    let overrides = Overrides {
        upstreams: vec!["http://127.0.0.1:3000".into()],
        workers: Some(1),
        ..Overrides::default()
    };
    match Config::parse(source, &overrides) {
        Ok(config) => assert_eq!(config.upstreams[0].targets.len(), 1),
        Err(e) => check_error(source, &e),
    }
});

fn check_config(source: &str, config: Config) {
    let again = Config::parse(source, &Overrides::default()).expect("the same text parses again");
    assert_eq!(config.hash, again.hash, "the same text, another hash");
    assert!(config.server.workers >= 1 && config.server.max_connections >= 1);
    assert!(config.server.max_header_bytes >= 256);
    assert!(!config.upstreams.is_empty() && !config.routes.is_empty());
    for route in &config.routes {
        assert!(route.upstream < config.upstreams.len());
        assert!(route.policy.is_none_or(|p| p < config.policies.len()));
    }
    for key in &config.auth.keys {
        assert!(key.policy.is_none_or(|p| p < config.policies.len()));
    }
    for policy in &config.policies {
        // Written into the rate-limit headers as it is.
        assert!(PolicyName::new(&policy.name).is_some(), "{:?}", policy.name);
        assert!((1..=2).contains(&policy.limiter.limits().len()));
    }
    let _ = config.summary();
    // Start-up, then a reload with the same file, as `POST /reload` would.
    let store = Arc::new(MemoryStore::new(config.server.max_keys));
    let app = App::with_store(config, store);
    App::reload(again, &app).expect("a reload onto the same memory store");
}

fn check_error(source: &str, e: &ConfigError) {
    assert!(!e.to_string().is_empty());
    let lines = source.lines().count().max(1);
    for invalid in e.invalid() {
        assert!(!invalid.message.is_empty(), "{invalid:?}");
        if let Some(line) = invalid.line {
            assert!(
                (1..=lines + 1).contains(&line),
                "line {line} of {lines}: {invalid:?}"
            );
        }
    }
    assert!(
        !e.invalid().is_empty() || matches!(e, ConfigError::Read { .. }),
        "an error that names no key: {e}"
    );
}
