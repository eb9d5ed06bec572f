//! What an operator plugs in: the alert rules in deploy/prometheus, checked and unit-tested by
//! promtool, and the Grafana dashboard in deploy/grafana, whose queries (and the rules') name
//! only metrics a running sluice exports.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use support::process::Process;
use support::*;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file)
}

/// Runs `promtool` with `args` in deploy/prometheus; fails with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(deploy("prometheus"))
        .output()
        .expect("promtool on PATH (Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn alert_rules_are_valid_and_fire_as_their_tests_expect() {
    promtool(&["check", "rules", "sluice-rules.yaml"]);
    promtool(&["test", "rules", "sluice-rules.test.yaml"]);
}

/// The `sluice_…` metric names in a query or a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (at, _) in text.match_indices("sluice_") {
        if text[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let end = text[at..]
            .find(|c| !ident(c))
            .map_or(text.len(), |n| at + n);
        names.insert(text[at..end].to_string());
    }
    names
}

/// The names of the samples in a `/metrics` text: `_total`, `_bucket`, `_sum`, `_count` and
/// `_info` included, as a query names them.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every string under an `expr` or `definition` key, anywhere in the dashboard.
fn queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(q)) => out.push(q.clone()),
                    _ => queries(v, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| queries(v, out)),
        _ => {}
    }
}

const TRAFFIC: &str = r#"
[upstreams.api]
targets = ["{upstream}"]
[upstreams.gone]
targets = ["{gone}"]
[policies.tight]
rate = "1/m"
burst = 1
[[routes]]
path = "/gone"
upstream = "gone"
policy = "none"
[[routes]]
path = "/limited"
upstream = "api"
policy = "tight"
[[routes]]
path = "/"
upstream = "api"
policy = "none"
"#;

#[tokio::test]
async fn the_dashboard_and_the_alerts_name_only_metrics_sluice_exports() {
    let up = spawn_upstream().await;
    let toml = TRAFFIC
        .replace("{upstream}", &up.url())
        .replace("{gone}", &closed_port());
    let sluice = Process::start(&toml, &[]).await;
    // A pass, a 429, a batch and an upstream that refuses: every family has a sample.
    assert_eq!(get(sluice.addr, "/limited").await.status, 200);
    assert_eq!(get(sluice.addr, "/limited").await.status, 429);
    assert_eq!(get(sluice.addr, "/gone").await.status, 502);
    let batch = json!({"requests": [{"id": "a", "method": "GET", "path": "/ok"}]});
    let res = send(sluice.addr, post_json("/batch", &batch.to_string())).await;
    assert_eq!(res.status, 207);
    let exported = exported(&metrics(sluice.admin).await);

    let text = std::fs::read_to_string(deploy("grafana/sluice.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut found = Vec::new();
    queries(&dashboard, &mut found);
    let used: BTreeSet<String> = found.iter().flat_map(|q| metric_names(q)).collect();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dashboard: {unknown:?} not in {exported:?}"
    );
    // What the dashboard is for: each of these has a panel.
    for name in [
        "sluice_requests_total",
        "sluice_limiter_decisions_total",
        "sluice_request_duration_seconds_bucket",
        "sluice_upstream_latency_seconds_bucket",
        "sluice_upstream_errors_total",
        "sluice_connections_open",
        "sluice_connections_max",
        "sluice_limiter_keys",
        "sluice_store_calls_total",
        "sluice_store_fallbacks_total",
        "sluice_config_reloads_total",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }

    let rules = std::fs::read_to_string(deploy("prometheus/sluice-rules.yaml")).unwrap();
    let used = metric_names(&rules);
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "alert rules: {unknown:?} not in {exported:?}"
    );
    assert!(used.len() >= 6, "{used:?}");
}

#[test]
fn every_dashboard_query_goes_to_the_chosen_data_source() {
    let text = std::fs::read_to_string(deploy("grafana/sluice.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let vars = dashboard["templating"]["list"].as_array().unwrap();
    assert!(vars.iter().any(|v| v["type"] == "datasource"
        && v["name"] == "datasource"
        && v["query"] == "prometheus"));
    let mut panels: Vec<&Value> = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    let mut targets = 0;
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        for t in p["targets"].as_array().unwrap() {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{}", p["title"]);
            targets += 1;
        }
    }
    assert!(targets >= 10, "{targets}");
}
