//! `sluice demo`'s API behind the proxy shows the API's documented statuses.

mod support;

use http::Method;
use http_body_util::Full;
use support::*;

#[tokio::test]
async fn the_demo_api_answers_with_the_documented_statuses() {
    let api = sluice::demo::spawn_api().unwrap();
    let sluice = spawn_default(&format!("http://{api}"));
    let a = sluice.addr;
    let created = send(a, post_json("/v1/candidates", r#"{"name":"Ada"}"#)).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_u64().unwrap();
    assert_eq!(
        send(a, post_json("/v1/candidates", r#"{"name":""}"#))
            .await
            .status,
        422
    );
    let files = format!("/v1/candidates/{id}/files");
    assert_eq!(
        send(a, post_json(&files, r#"{"type":"cv"}"#)).await.status,
        201
    );
    assert_eq!(
        send(a, post_json(&files, r#"{"type":"cv"}"#)).await.status,
        409
    );
    let report = format!(r#"{{"candidate_id":{id}}}"#);
    assert_eq!(send(a, post_json("/v1/reports", &report)).await.status, 202);
    let delete = request(Method::DELETE, &format!("/v1/candidates/{id}"))
        .body(Full::<bytes::Bytes>::default())
        .unwrap();
    assert_eq!(send(a, delete).await.status, 204);
    assert_eq!(get(a, &format!("/v1/candidates/{id}")).await.status, 404);
}

#[test]
fn the_demo_prints_curl_lines_for_its_address() {
    let lines = sluice::demo::curl_lines("127.0.0.1:8080".parse().unwrap(), false);
    assert!(lines.contains("curl -i http://127.0.0.1:8080/v1/candidates -X POST"));
    let tls = sluice::demo::curl_lines("127.0.0.1:8443".parse().unwrap(), true);
    assert!(tls.contains("curl -i --cacert \"$CA\" https://127.0.0.1:8443/v1/candidates -X POST"));
}

/// The demo behind HTTPS, asked by curl over HTTP/2 and over HTTP/1.1.
#[tokio::test]
async fn curl_over_https_with_http2_and_http1_reaches_the_demo() {
    let ca = support::tls::Ca::new("demo");
    let leaf = ca.leaf(&["127.0.0.1"]);
    let toml = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        leaf.cert.display(),
        leaf.key.display()
    );
    let p = process::Process::new()
        .config(&toml)
        .args(["demo"])
        .start()
        .await;
    for (flag, version) in [("--http2", "HTTP/2 201"), ("--http1.1", "HTTP/1.1 201")] {
        let out = std::process::Command::new("curl")
            .args(["-si", flag, "--cacert"])
            .arg(ca.cert())
            .arg(format!("https://{}/v1/candidates", p.addr))
            .args(["-X", "POST", "-H", "Content-Type: application/json"])
            .args(["-d", r#"{"name": "Ada"}"#])
            .output()
            .expect("curl on PATH");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(version), "{flag}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("ratelimit-policy:"),
            "{text}"
        );
        assert!(text.contains(r#""name":"Ada""#), "{text}");
    }
}
