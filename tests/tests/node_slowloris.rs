//! Slowloris (issue 9 item 8): clients that open connections and send their
//! requests slowly, or never. A request's head must arrive within
//! `--header-timeout-seconds`, an API body within
//! `--handshake-timeout-seconds`; a connection counts against
//! `--max-connections` (the admin listener: `--max-admin-connections`) from
//! the moment it is accepted, and over the cap gets a 503 JSON reply while
//! established clients keep working.

use std::time::Duration;

use pubmesh_tests::harness::{eventually, free_port, patience, Client, Node, API_KEY};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The start of an upgrade request, never finished.
const HALF: &[u8] = b"GET /websocket HTTP/1.1\r\nHost: pubmesh\r\nUpgrade: websocket\r\n";

async fn half_sent(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(HALF).await.expect("write");
    tcp
}

/// Read until the server closes `tcp` (end of stream or reset); returns what
/// it sent. Panics if it is still open after `within`.
async fn closed_by_server(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One request on a fresh connection with `Connection: close`: the raw reply.
async fn raw_request(port: u16, request: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let reply = closed_by_server(&mut tcp, patience(10)).await;
    String::from_utf8_lossy(&reply).to_string()
}

/// A metric from a listener at `addr` (`host:port`) that serves /metrics.
async fn metric_at(addr: &str, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A member of `room` gets a message published through the API at `api`.
async fn still_served(member: &mut Client, api: &str, n: u64) {
    let reply = reqwest::Client::new()
        .post(format!("http://{api}/api/notify/channels"))
        .header("X-API-Key", API_KEY)
        .json(&json!({"channel_ids": ["room"], "data": {"type": "t", "data": {"n": n}}}))
        .send()
        .await
        .expect("notify");
    assert_eq!(reply.status().as_u16(), 200);
    let got = member.recv_until(|f| f["type"] == "t").await;
    assert_eq!(got["data"]["n"], n, "{got}");
}

#[tokio::test]
async fn half_sent_requests_are_closed_within_the_header_timeout() {
    let node = Node::start(&["--header-timeout-seconds", "1"]).await;
    let addr = format!("127.0.0.1:{}", node.port);
    let mut member = node.client("channel_id=room").await;
    let mut pending = Vec::new();
    for _ in 0..100 {
        pending.push(half_sent(node.port).await);
    }
    // Connections that send nothing at all go the same way.
    for _ in 0..10 {
        pending.push(
            TcpStream::connect(("127.0.0.1", node.port))
                .await
                .expect("connect"),
        );
    }
    still_served(&mut member, &addr, 1).await;
    for tcp in &mut pending {
        let reply = closed_by_server(tcp, patience(20)).await;
        assert!(reply.is_empty(), "{}", String::from_utf8_lossy(&reply));
    }
    assert!(
        metric_at(&addr, "pubmesh_http_timeouts_total{phase=\"header\"}").await >= 110.0,
        "every one counted"
    );
    // The established client was not touched.
    still_served(&mut member, &addr, 2).await;
    assert_eq!(
        metric_at(&addr, "pubmesh_connections_closed_total{reason=\"client\"}").await,
        0.0
    );
}

#[tokio::test]
async fn pending_handshakes_fill_the_cap_and_are_refused_until_they_time_out() {
    const CAP: usize = 10;
    // Long enough for the checks below on a busy machine, short for the test.
    let header = patience(10).as_secs().max(10).to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&[
        "--max-connections",
        &CAP.to_string(),
        "--header-timeout-seconds",
        &header,
        "--admin-listen",
        &admin,
    ])
    .await;
    let pending_http = "pubmesh_http_connections{listener=\"client\"}";
    let mut member = node.client("channel_id=room").await;
    // The readiness checks' connections are gone: only the member is left.
    eventually("no HTTP connection left", patience(10), || async {
        (metric_at(&admin, pending_http).await == 0.0).then_some(())
    })
    .await;

    let mut pending = Vec::new();
    for _ in 0..CAP - 1 {
        pending.push(half_sent(node.port).await);
    }
    eventually("the half-sent requests accepted", patience(10), || async {
        (metric_at(&admin, pending_http).await == (CAP - 1) as f64).then_some(())
    })
    .await;

    // The cap is full (1 socket + 9 handshakes): a new client is refused
    // with a 503 and a JSON body, over WebSocket and over plain HTTP.
    match Client::connect_raw(&node.ws(""), None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 503);
            let body =
                String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).to_string();
            let body: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
            assert_eq!(body["code"], "capacity", "{body}");
        }
        Ok(_) => panic!("a client over the cap was admitted"),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
    let reply = raw_request(
        node.port,
        "GET /readyz HTTP/1.1\r\nHost: pubmesh\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert!(reply.contains(r#""code":"capacity""#), "{reply}");
    assert!(metric_at(&admin, "pubmesh_http_refused_total{listener=\"client\"}").await >= 2.0);
    // The established client is served meanwhile.
    still_served(&mut member, &admin, 1).await;

    // The handshakes time out and give their places back.
    for tcp in &mut pending {
        closed_by_server(tcp, patience(30)).await;
    }
    let url = node.ws("");
    let mut late = eventually("a new client admitted", patience(10), || {
        let url = url.clone();
        async move { Client::connect_raw(&url, None).await.ok() }
    })
    .await;
    let hello = late.recv().await;
    assert_eq!(hello["type"], "connection", "{hello}");
    still_served(&mut member, &admin, 2).await;
}

#[tokio::test]
async fn the_admin_listener_has_its_own_cap_and_header_timeout() {
    let admin_port = free_port();
    let admin = format!("127.0.0.1:{admin_port}");
    let node = Node::start(&[
        "--admin-listen",
        &admin,
        "--max-admin-connections",
        "3",
        "--header-timeout-seconds",
        "2",
    ])
    .await;
    let mut member = node.client("channel_id=room").await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        let mut tcp = TcpStream::connect(("127.0.0.1", admin_port))
            .await
            .expect("connect");
        tcp.write_all(b"POST /api/broadcast HTTP/1.1\r\nHost: pubmesh\r\n")
            .await
            .expect("write");
        pending.push(tcp);
    }
    // Once the three are accepted, a fourth connection is refused.
    let refused = eventually("a refusal at the admin cap", patience(10), || async {
        let reply = raw_request(
            admin_port,
            "GET /livez HTTP/1.1\r\nHost: pubmesh\r\nConnection: close\r\n\r\n",
        )
        .await;
        reply.starts_with("HTTP/1.1 503").then_some(reply)
    })
    .await;
    assert!(refused.contains(r#""code":"capacity""#), "{refused}");
    // WebSocket clients on the client listener do not notice.
    member
        .send(json!({"type": "subscribe", "channel_ids": ["other"], "ref": 1}))
        .await;
    let reply = member.recv().await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    for tcp in &mut pending {
        closed_by_server(tcp, patience(20)).await;
    }
    // Free again: the API answers.
    let status = eventually("the admin API back", patience(10), || async {
        let response = reqwest::Client::new()
            .get(format!("http://{admin}/api/nodes"))
            .header("X-API-Key", API_KEY)
            .send()
            .await
            .ok()?;
        Some(response.status().as_u16())
    })
    .await;
    assert_eq!(status, 200);
    assert!(metric_at(&admin, "pubmesh_http_refused_total{listener=\"admin\"}").await >= 1.0);
    assert!(metric_at(&admin, "pubmesh_http_timeouts_total{phase=\"header\"}").await >= 3.0);
}

#[tokio::test]
async fn an_api_body_sent_too_slowly_gets_408_within_the_handshake_timeout() {
    let node = Node::start(&["--handshake-timeout-seconds", "1"]).await;
    let mut member = node.client("channel_id=room").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", node.port))
        .await
        .expect("connect");
    let head = format!(
        "POST /api/notify/channels HTTP/1.1\r\nHost: pubmesh\r\nX-API-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"channel_ids\":"
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let reply = tokio::time::timeout(patience(20), async {
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.expect("read");
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .expect("a reply within the bound");
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains(r#""code":"timeout""#), "{reply}");
    assert_eq!(
        node.metric("pubmesh_http_timeouts_total{phase=\"handshake\"}")
            .await,
        1.0
    );
    // A body sent in time still works.
    still_served(&mut member, &format!("127.0.0.1:{}", node.port), 1).await;
}
