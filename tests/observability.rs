//! What an operator plugs in: the alert rules in deploy/prometheus, checked and unit-tested by
//! promtool.

mod support;

use std::path::Path;
use std::process::Command;

/// Runs `promtool` with `args` in deploy/prometheus; fails with its output unless it succeeds.
fn promtool(args: &[&str]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
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
