//! The shipped configs stay valid, and the command line reports bad ones clearly.

mod support;

use std::io::Write;
use std::process::Stdio;

use sluice::config::{Config, Overrides};
use support::process::{check, command as sluice};
use support::{free_port, temp_file};

#[test]
fn every_file_in_config_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path, &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked += 1;
        }
    }
    assert!(checked >= 2);
}

#[test]
fn the_full_example_states_the_published_rules() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml");
    let example = Config::load(path.as_ref(), &Overrides::default()).unwrap();
    let p = example.policy("default").unwrap();
    assert_eq!(p.describe(), "1/s burst 100, 100 per 60s");
    assert_eq!(example.server.request_timeout.as_secs(), 60);
}

#[test]
fn check_prints_a_summary_for_a_good_config() {
    let out = sluice()
        .args(["check", "--config", "config/sluice.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("upstream api: http://127.0.0.1:3000"),
        "{stdout}"
    );
    assert!(
        stdout.contains("policy default: 1/s burst 100, 100 per 60s"),
        "{stdout}"
    );
    assert!(stdout.contains("config OK"), "{stdout}");
}

#[test]
fn check_into_a_closed_pipe_does_not_panic() {
    // As `sluice check | head -0` would: the reader is gone before anything is written.
    let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
    drop(reader);
    let out = sluice()
        .args(["check", "--config", "config/sluice.toml"])
        .stdout(std::os::fd::OwnedFd::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_server_that_cannot_start_says_why_in_its_log_format() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let start = |format: &str| {
        let out = sluice()
            .args(["--listen", &addr, "--upstream", "http://127.0.0.1:9"])
            .args(["--admin-listen", "", "--log-format", format])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8(out.stderr).unwrap()
    };
    // A log pipeline reading JSON lines gets the reason as one of them.
    let json = start("json");
    let line: serde_json::Value = serde_json::from_str(json.trim())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {json}"));
    assert_eq!(line["level"], "ERROR");
    let message = line["fields"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("cannot listen on {addr}")),
        "{json}"
    );
    let text = start("text");
    assert!(
        text.starts_with(&format!("sluice: cannot listen on {addr}")),
        "{text}"
    );
}

#[test]
fn check_names_the_key_and_line_of_an_error_and_exits_1() {
    let (code, stderr) = check(
        "[upstreams.api]\ntargets = [\"http://127.0.0.1:3000\"]\n\n[policies.default]\nrate = \"lots\"\nburst = 5\n",
    );
    assert_eq!(code, Some(1));
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("policies.default.rate"), "{stderr}");

    let (code, stderr) = check("[server]\nlisten_on = \"0.0.0.0:80\"\n");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("line 2") && stderr.contains("listen_on"),
        "{stderr}"
    );
}

#[test]
fn check_names_the_line_of_a_zero_limit_and_of_what_needs_a_missing_table() {
    let upstream = "[upstreams.api]\ntargets = [\"http://127.0.0.1:3000\"]\n\n";
    let cases = [
        (
            "max_connections",
            "[server]\nmax_connections = 0\n",
            5,
            "server.max_connections",
        ),
        (
            "max_requests",
            "[batch]\nmax_requests = 0\n",
            5,
            "batch.max_requests",
        ),
        (
            "max_concurrency",
            "[batch]\nenabled = true\nmax_concurrency = 0\n",
            6,
            "batch.max_concurrency",
        ),
        (
            "api_keys",
            "[auth]\nforward_credentials = false\nmode = \"api_keys\"\n",
            6,
            "auth.keys",
        ),
        (
            "several",
            "[upstreams.web]\ntargets = [\"http://127.0.0.1:3001\"]\n",
            4,
            "routes",
        ),
    ];
    for (name, toml, line, key) in cases {
        let (code, stderr) = check(&format!("{upstream}{toml}"));
        assert_eq!(code, Some(1), "{name}: {stderr}");
        assert!(
            stderr.contains(&format!("line {line}: `{key}`")),
            "{name}: {stderr}"
        );
    }
    let (code, stderr) =
        check("[server]\nlisten = \"127.0.0.1:8080\"\n\n[upstreams.api]\ntargets = []\n");
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("line 5: `upstreams.api.targets`"),
        "{stderr}"
    );
}

#[test]
fn flags_and_environment_override_the_file() {
    let out = sluice()
        .args([
            "check",
            "--config",
            "config/sidecar.toml",
            "--listen",
            "127.0.0.1:7000",
        ])
        .env("SLUICE_UPSTREAM", "http://10.0.0.5:4000")
        .env("SLUICE_WORKERS", "3")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("listen 127.0.0.1:7000"), "{stdout}");
    assert!(stdout.contains("3 worker(s)"), "{stdout}");
    assert!(
        stdout.contains("upstream api: http://10.0.0.5:4000"),
        "{stdout}"
    );
}

#[test]
fn hash_key_prints_the_sha256_hex_of_stdin() {
    let mut child = sluice()
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"secret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
}

#[test]
fn without_an_upstream_sluice_explains_and_exits_1() {
    let out = sluice()
        .env_remove("SLUICE_UPSTREAM")
        .env_remove("SLUICE_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--upstream"), "{stderr}");
}

#[test]
fn healthcheck_fails_when_nothing_answers() {
    let url = format!("http://127.0.0.1:{}/healthz", free_port());
    let out = sluice()
        .args(["healthcheck", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// The `sluice.toml: |` blocks of a Kubernetes manifest, dedented: the lines after the key
/// that are blank or indented deeper than it.
fn embedded_configs(manifest: &str) -> Vec<String> {
    let indent = |line: &str| line.len() - line.trim_start().len();
    let mut configs = Vec::new();
    let mut lines = manifest.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim() != "sluice.toml: |" {
            continue;
        }
        let key = indent(line);
        let mut block = Vec::new();
        while let Some(next) = lines.next_if(|l| l.trim().is_empty() || indent(l) > key) {
            block.push(next);
        }
        while block.last().is_some_and(|l| l.trim().is_empty()) {
            block.pop();
        }
        let depth = block
            .iter()
            .filter(|l| !l.trim().is_empty())
            .map(|l| indent(l))
            .min()
            .unwrap_or(0);
        let text: String = block
            .iter()
            .map(|l| format!("{}\n", l.get(depth..).unwrap_or("")))
            .collect();
        configs.push(text);
    }
    configs
}

#[test]
fn every_kubernetes_manifest_carries_a_config_that_checks() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut manifests = Vec::new();
    for entry in std::fs::read_dir(root.join("deploy/kubernetes")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let configs = embedded_configs(&std::fs::read_to_string(&path).unwrap());
        assert!(!configs.is_empty(), "{name}: no `sluice.toml: |` block");
        for (i, config) in configs.iter().enumerate() {
            let file = temp_file(&format!("{name}.{i}.toml"), config);
            let out = sluice()
                .arg("check")
                .arg("--config")
                .arg(&file)
                .env("SLUICE_STORE_KEY_SECRET", "test")
                .env_remove("SLUICE_STORE_URL")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{name}, block {i}:\n{config}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if name == "sidecar-redis.yaml" {
            assert!(
                configs.iter().any(|c| c.contains("kind = \"redis\"")),
                "{name}: no [store] with kind = \"redis\""
            );
        }
        manifests.push(name);
    }
    for expected in ["sidecar.yaml", "sidecar-redis.yaml"] {
        assert!(manifests.iter().any(|m| m == expected), "{expected}");
    }
}
