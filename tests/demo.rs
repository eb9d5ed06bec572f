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
    let lines = sluice::demo::curl_lines("127.0.0.1:8080".parse().unwrap());
    assert!(lines.contains("curl -i http://127.0.0.1:8080/v1/candidates -X POST"));
}
