//! Slow and greedy clients, seen from a raw socket: headers or bodies that never finish,
//! idle kept-alive connections, more connections than `server.max_connections` and more
//! chat requests than `server.max_in_flight`. Nothing here asserts how fast a limit acts,
//! only that it acts (every wait for it is generous) and what the client reads.

// Test helpers panic on purpose: a panic is how a test reports failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use airbag::mock::{Fault, FaultRule, MockOptions, MockProvider};
use common::{TestGateway, anthropic_chat, mock, mock_with, openai_chat, provider, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any limit a test sets: a connection still open after this is a bug.
const GENEROUS: Duration = Duration::from_secs(15);

async fn gateway(server: &str, upstream: &MockProvider) -> TestGateway {
    // A first-byte deadline longer than the provider's delay in the in-flight test.
    let timeouts =
        "timeouts = { connect = \"1s\", first_byte = \"10s\", idle = \"1s\", total = \"20s\" }";
    let config = format!(
        "[server]\n{server}\n{}{}",
        provider("up", "openai", upstream, timeouts),
        route("chat", &["up/m"]),
    );
    TestGateway::start(&config, &[]).await
}

/// Everything the server sends until it closes the connection, or None if it is still
/// open after [`GENEROUS`].
async fn read_until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let read = tokio::time::timeout(GENEROUS, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    read.ok()
        .map(|()| String::from_utf8_lossy(&received).into_owned())
}

/// The head and body of one response read off `stream` (with a `content-length`).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(GENEROUS, async {
        loop {
            let text = String::from_utf8_lossy(&received).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return;
                }
            }
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed mid-response: {text}");
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("a response within the generous wait");
    String::from_utf8_lossy(&received).into_owned()
}

fn chat_request(path: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_closed() {
    let upstream = mock("up").await;
    let gateway = gateway("header_timeout = \"300ms\"", &upstream).await;
    let addr = gateway.running.proxy_addr;

    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: airbag\r\n")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        read_until_closed(&mut half).await.is_some(),
        "half-sent headers keep the connection open"
    );
    assert!(
        read_until_closed(&mut silent).await.is_some(),
        "a connection that never sends a byte stays open"
    );
    assert_eq!(upstream.request_count(), 0);
    let metrics = gateway.metrics().await;
    let line = "airbag_connections_closed_total{listener=\"proxy\",reason=\"header_timeout\"} 2";
    assert!(metrics.contains(line), "{line} missing in {metrics}");

    // A client that sends its request at once is not affected.
    let reply = gateway.openai(openai_chat("chat", "hi")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_gets_a_408_and_a_close() {
    let upstream = mock("up").await;
    let gateway = gateway("body_timeout = \"300ms\"", &upstream).await;
    for (path, shape) in [
        ("/v1/chat/completions", "invalid_request_error"),
        ("/v1/messages", "invalid_request_error"),
    ] {
        let mut stream = TcpStream::connect(gateway.running.proxy_addr)
            .await
            .unwrap();
        let request = chat_request(path, 100);
        stream.write_all(request.as_bytes()).await.unwrap();
        stream.write_all(b"{\"model\": \"chat\"").await.unwrap();
        let answer = read_until_closed(&mut stream)
            .await
            .expect("the connection is closed after the 408");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("server.body_timeout"), "{answer}");
        assert!(answer.contains(shape), "{answer}");
        assert!(answer.contains("x-airbag-error: body_timeout"), "{answer}");
    }
    assert_eq!(upstream.request_count(), 0);

    // The admin listener reads bodies within the same limit.
    let mut stream = TcpStream::connect(gateway.running.admin_addr)
        .await
        .unwrap();
    stream
        .write_all(chat_request("/admin/cache/purge", 50).as_bytes())
        .await
        .unwrap();
    stream.write_all(b"{\"tenant\"").await.unwrap();
    let answer = read_until_closed(&mut stream).await.expect("closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("server.body_timeout"), "{answer}");
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_after_its_answer() {
    let upstream = mock("up").await;
    let gateway = gateway("idle_timeout = \"300ms\"", &upstream).await;
    let mut stream = TcpStream::connect(gateway.running.proxy_addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: airbag\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Kept alive: a second request on the same connection is answered.
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: airbag\r\n\r\n")
        .await
        .unwrap();
    let second = read_response(&mut stream).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    // Then silence: the header timeout (10s by default) is not what closes it.
    assert_eq!(
        read_until_closed(&mut stream).await.as_deref(),
        Some(""),
        "an idle connection stays open"
    );
    let metrics = gateway.metrics().await;
    let line = "airbag_connections_closed_total{listener=\"proxy\",reason=\"idle_timeout\"} 1";
    assert!(metrics.contains(line), "{line} missing in {metrics}");
}

async fn connect_raw(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

#[tokio::test]
async fn connections_past_the_cap_get_a_503_with_retry_after_in_their_protocol() {
    let upstream = mock("up").await;
    let gateway = gateway("max_connections = 2", &upstream).await;
    let addr = gateway.running.proxy_addr;
    // Two idle connections fill the listener (closed by the header timeout only after
    // 10s, far longer than this test needs them).
    let first = connect_raw(addr).await;
    let _second = connect_raw(addr).await;

    let client = reqwest::Client::new();
    let reply =
        common::Reply::read(client.get(gateway.url("/healthz")).send().await.unwrap()).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), "1");
    let body = reply.json();
    assert_eq!(body["error"]["type"], "service_unavailable");
    assert_eq!(body["error"]["param"], "server.max_connections");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("limit of 2 open connections"), "{message}");

    let reply = common::Reply::read(
        client
            .post(gateway.url("/v1/messages"))
            .header("content-type", "application/json")
            .body(anthropic_chat("chat", "hi").to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
    assert!(reply.text.contains("server.max_connections"));
    assert_eq!(upstream.request_count(), 0);
    let metrics = gateway.metrics().await;
    for line in [
        "airbag_connections{listener=\"proxy\"} 2",
        "airbag_connections_closed_total{listener=\"proxy\",reason=\"max_connections\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} missing in {metrics}");
    }

    // Once a connection closes, its slot serves the next client.
    drop(first);
    let served = tokio::time::timeout(GENEROUS, async {
        loop {
            let client = reqwest::Client::new();
            if let Ok(response) = client.get(gateway.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the freed slot never served a client");
}

#[tokio::test]
async fn the_admin_listener_has_a_connection_cap_of_its_own() {
    let upstream = mock("up").await;
    let config = format!(
        "[admin]\nmax_connections = 1\n{}{}",
        provider("up", "openai", &upstream, ""),
        route("chat", &["up/m"]),
    );
    let gateway = TestGateway::start(&config, &[]).await;
    let _held = connect_raw(gateway.running.admin_addr).await;
    let reply = common::Reply::read(
        reqwest::Client::new()
            .get(gateway.admin_url("/metrics"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), "1");
    let error = reply.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("limit of 1 open connections (admin.max_connections)"),
        "{error}"
    );
    // The proxy listener's own cap is untouched.
    assert_eq!(gateway.get("/healthz", &[]).await.status, 200);
}

#[tokio::test]
async fn chat_requests_past_the_in_flight_cap_get_a_503_and_health_still_answers() {
    // The first request is held by the provider while the others arrive.
    let upstream = mock_with(
        "up",
        MockOptions::default(),
        vec![FaultRule {
            times: Some(1),
            ..FaultRule::always(Fault::Delay { ms: 3000 })
        }],
    )
    .await;
    let gateway = gateway("max_in_flight = 1", &upstream).await;
    let url = gateway.url("/v1/chat/completions");
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&openai_chat("chat", "slow"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    tokio::time::timeout(GENEROUS, async {
        while upstream.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first request reaches the provider");

    let reply = gateway.openai(openai_chat("chat", "second")).await;
    assert_eq!(reply.status, 503, "{}", reply.text);
    assert_eq!(reply.header("retry-after"), "1");
    assert_eq!(reply.header("x-airbag-error"), "overloaded");
    let body = reply.json();
    assert_eq!(body["error"]["param"], "server.max_in_flight");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1 requests in flight")
    );
    let reply = gateway.anthropic(anthropic_chat("chat", "third")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"]["type"], "overloaded_error");
    assert!(reply.text.contains("server.max_in_flight"));
    assert_eq!(gateway.get("/healthz", &[]).await.status, 200);
    assert_eq!(gateway.get("/readyz", &[]).await.status, 200);

    assert_eq!(held.await.unwrap(), 200);
    assert_eq!(
        upstream.request_count(),
        1,
        "refused requests never reach it"
    );
    let metrics = gateway.metrics().await;
    for protocol in ["openai", "anthropic"] {
        let line = format!(
            "airbag_rejected_requests_total{{kind=\"overloaded\",protocol=\"{protocol}\"}} 1"
        );
        assert!(metrics.contains(&line), "{line} missing in {metrics}");
    }

    // The slot is given back once the first answer's last byte is sent.
    let served = tokio::time::timeout(GENEROUS, async {
        loop {
            if gateway.openai(openai_chat("chat", "after")).await.status == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the slot was never given back");
}
