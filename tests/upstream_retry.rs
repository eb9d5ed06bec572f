//! A request lost on a kept-alive connection that the upstream had closed is sent once more, on
//! a new connection, if it may be repeated: a GET gets its answer instead of a 502; a POST or a
//! streamed body is never sent twice.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::Full;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Longer than sluice lets a pooled connection rest before a request on it is worth a copy.
const REST: Duration = Duration::from_millis(300);

/// A request the upstream read: on which of its connections (counted from 1), and whether it
/// answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Hit {
    conn: usize,
    request: String,
    answered: bool,
}

fn answered(conn: usize, request: &str) -> Hit {
    Hit {
        conn,
        request: request.to_string(),
        answered: true,
    }
}

fn dropped(conn: usize, request: &str) -> Hit {
    Hit {
        answered: false,
        ..answered(conn, request)
    }
}

/// How the test upstream ends its connections.
#[derive(Clone, Copy)]
struct Closing {
    /// Requests answered on a connection before it is closed; never with `Connection: close`.
    answers: usize,
    /// How long the connection may then stay idle before the upstream closes it. A request that
    /// comes sooner is read and left unanswered, and the connection closed: as when the
    /// upstream's keep-alive timeout fires just as sluice writes to the connection.
    keep_alive: Duration,
    /// An RST rather than a FIN.
    reset: bool,
}

/// Closed after one answer, as soon as the next request comes.
const AFTER_ONE: Closing = Closing {
    answers: 1,
    keep_alive: Duration::from_secs(60),
    reset: false,
};

struct ClosingUpstream {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl ClosingUpstream {
    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// A raw HTTP/1.1 upstream on loopback that closes its connections as `closing` says.
async fn closing_upstream(closing: Closing) -> ClosingUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let log = hits.clone();
    tokio::spawn(async move {
        let mut conn = 0;
        while let Ok((s, _)) = listener.accept().await {
            conn += 1;
            tokio::spawn(serve(s, conn, closing, log.clone()));
        }
    });
    ClosingUpstream { url, hits }
}

async fn serve(mut s: TcpStream, conn: usize, closing: Closing, log: Arc<Mutex<Vec<Hit>>>) {
    let mut buf = Vec::new();
    for _ in 0..closing.answers {
        let Some(req) = read_request(&mut s, &mut buf).await else {
            return;
        };
        log.lock().unwrap().push(answered(conn, &req));
        let answer = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      content-length: 11\r\n\r\n{\"ok\":true}";
        s.write_all(answer.as_bytes()).await.unwrap();
    }
    let next = tokio::time::timeout(closing.keep_alive, read_request(&mut s, &mut buf));
    if let Ok(Some(req)) = next.await {
        log.lock().unwrap().push(dropped(conn, &req));
    }
    if closing.reset {
        s.set_zero_linger().unwrap();
    }
}

/// Reads one request; returns "METHOD PATH".
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let (head, _) = raw::read_message(s, buf).await?;
    let mut words = head.split(' ');
    Some(format!("{} {}", words.next()?, words.next()?))
}

const RESETS: &str = r#"sluice_upstream_errors_total{upstream="api",kind="reset"}"#;

/// Two GETs in a row, the second on the connection the first used, which the upstream closes.
async fn second_get_is_sent_again(closing: Closing) {
    let up = closing_upstream(closing).await;
    let sluice = spawn_default(&up.url);
    assert_eq!(get(sluice.addr, "/first").await.status, 200);
    let res = get(sluice.addr, "/v1/x").await;
    assert_eq!(res.status, 200, "body: {:?}", res.body);
    assert_eq!(res.json()["ok"], true);
    assert_eq!(
        up.hits(),
        [
            answered(1, "GET /first"),
            dropped(1, "GET /v1/x"),
            answered(2, "GET /v1/x"),
        ]
    );
    let text = sluice.metrics().await;
    assert_eq!(metric_line(&text, RESETS), None, "{text}");
}

#[tokio::test]
async fn a_get_lost_on_a_connection_closed_after_an_answer_is_sent_again_on_a_new_one() {
    second_get_is_sent_again(AFTER_ONE).await;
}

#[tokio::test]
async fn a_get_lost_on_a_connection_reset_after_an_answer_is_sent_again_on_a_new_one() {
    let reset = Closing {
        reset: true,
        ..AFTER_ONE
    };
    second_get_is_sent_again(reset).await;
}

#[tokio::test]
async fn a_get_lost_on_a_connection_that_had_rested_is_sent_again_on_a_new_one() {
    let up = closing_upstream(Closing {
        answers: 2,
        ..AFTER_ONE
    })
    .await;
    let sluice = spawn_default(&up.url);
    // The second answer on the connection shows sluice the upstream keeps connections open.
    assert_eq!(get(sluice.addr, "/a").await.status, 200);
    assert_eq!(get(sluice.addr, "/b").await.status, 200);
    tokio::time::sleep(REST).await;
    let res = get(sluice.addr, "/c").await;
    assert_eq!(res.status, 200, "body: {:?}", res.body);
    assert_eq!(
        up.hits(),
        [
            answered(1, "GET /a"),
            answered(1, "GET /b"),
            dropped(1, "GET /c"),
            answered(2, "GET /c"),
        ]
    );
}

#[tokio::test]
async fn once_the_upstream_closed_an_idle_connection_a_get_on_another_is_covered_too() {
    let up = closing_upstream(Closing {
        answers: 2,
        keep_alive: Duration::from_millis(250),
        reset: false,
    })
    .await;
    let sluice = spawn_default(&up.url);
    assert_eq!(get(sluice.addr, "/a").await.status, 200);
    assert_eq!(get(sluice.addr, "/b").await.status, 200);
    // The upstream closes the idle connection; sluice finds it closed and makes a new one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get(sluice.addr, "/c").await.status, 200);
    assert_eq!(get(sluice.addr, "/d").await.status, 200);
    // At once, on the connection /c and /d used: it has not rested, but its target is suspect.
    let res = get(sluice.addr, "/e").await;
    assert_eq!(res.status, 200, "body: {:?}", res.body);
    assert_eq!(
        up.hits(),
        [
            answered(1, "GET /a"),
            answered(1, "GET /b"),
            answered(2, "GET /c"),
            answered(2, "GET /d"),
            dropped(2, "GET /e"),
            answered(3, "GET /e"),
        ]
    );
}

#[tokio::test]
async fn a_post_lost_on_a_closed_connection_is_a_502_and_never_sent_twice() {
    let up = closing_upstream(AFTER_ONE).await;
    let sluice = spawn_default(&up.url);
    assert_eq!(get(sluice.addr, "/first").await.status, 200);
    let res = send(sluice.addr, post_json("/v1/x", r#"{"n":1}"#)).await;
    assert_problem(&res, 502);
    assert_eq!(
        up.hits(),
        [answered(1, "GET /first"), dropped(1, "POST /v1/x")]
    );
    assert_eq!(metric_value(&sluice.metrics().await, RESETS), 1.0);
}

#[tokio::test]
async fn a_put_with_a_streamed_body_lost_on_a_closed_connection_is_a_502() {
    let up = closing_upstream(AFTER_ONE).await;
    let sluice = Sluice::builder()
        .target(&up.url)
        .route("/", "validate_json = false")
        .start();
    assert_eq!(get(sluice.addr, "/first").await.status, 200);
    let put = request(Method::PUT, "/v1/x")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{\"n\":1}")))
        .unwrap();
    assert_problem(&send(sluice.addr, put).await, 502);
    assert_eq!(
        up.hits(),
        [answered(1, "GET /first"), dropped(1, "PUT /v1/x")]
    );
}

#[tokio::test]
async fn a_request_sent_again_moves_on_to_the_next_target_when_its_own_refuses() {
    // The first target takes one connection, answers once, then is gone: the GET sent again
    // finds it refusing, and goes to the second target, as a refused request does.
    let first = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let first_url = format!("http://{}", first.local_addr().unwrap());
    let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let log = hits.clone();
    tokio::spawn(async move {
        let (s, _) = first.accept().await.unwrap();
        drop(first);
        serve(s, 1, AFTER_ONE, log).await;
    });
    let second = closing_upstream(AFTER_ONE).await;
    let sluice = Sluice::builder()
        .target(&first_url)
        .target(&second.url)
        .server("workers = 1")
        .start();
    // Round robin: send until a request is lost on the first target's closed connection.
    let mut lost = None;
    for i in 0..4 {
        let res = get(sluice.addr, &format!("/r{i}")).await;
        if let Some(h) = hits.lock().unwrap().iter().find(|h| !h.answered) {
            lost = Some((res, h.request.clone()));
            break;
        }
    }
    let (res, request) = lost.expect("a request was lost on the first target's connection");
    assert_eq!(res.status, 200, "body: {:?}", res.body);
    let answered_by_second = second
        .hits()
        .iter()
        .filter(|h| h.request == request && h.answered)
        .count();
    assert_eq!(answered_by_second, 1, "{:?}", second.hits());
    assert_eq!(metric_line(&sluice.metrics().await, RESETS), None);
}
