//! The connection cap holds under a burst: a permit is taken when the
//! listener accepts a socket (before the upgrade) and held by the socket
//! until it closes. Metrics are read from `--admin-listen`: at the cap the
//! client listener refuses every new connection, /metrics too.

use pubmesh_tests::harness::{eventually, free_port, patience, Client, Node};

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

#[tokio::test]
async fn a_burst_of_twice_the_cap_admits_exactly_the_cap_and_leaks_no_permit() {
    const CAP: usize = 25;
    let admin = format!("127.0.0.1:{}", free_port());
    let node = Node::start(&[
        "--max-connections",
        &CAP.to_string(),
        "--admin-listen",
        &admin,
    ])
    .await;
    // The readiness check's HTTP connection has given its permit back.
    eventually("no HTTP connection open", patience(10), || async {
        (metric_at(&admin, "pubmesh_http_connections{listener=\"client\"}").await == 0.0)
            .then_some(())
    })
    .await;
    let url = node.ws("");
    let attempts: Vec<_> = (0..2 * CAP)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { Client::connect_raw(&url, None).await })
        })
        .collect();
    let mut open = Vec::new();
    let mut refused = 0;
    for attempt in attempts {
        match attempt.await.expect("task") {
            Ok(client) => open.push(client),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 503);
                refused += 1;
            }
            Err(e) => panic!("unexpected connect error: {e}"),
        }
    }
    assert_eq!(open.len(), CAP, "admitted");
    assert_eq!(refused, CAP, "refused with 503");
    assert_eq!(metric_at(&admin, "pubmesh_connections").await as usize, CAP);

    // Every permit comes back once the connections close: the cap admits
    // a full set again.
    drop(open);
    eventually("connections to close", patience(10), || async {
        (metric_at(&admin, "pubmesh_connections").await == 0.0).then_some(())
    })
    .await;
    let mut again = Vec::new();
    for _ in 0..CAP {
        again.push(Client::connect(&url).await);
    }
    let over = Client::connect_raw(&url, None).await;
    assert!(over.is_err(), "one over the cap is refused");
    assert_eq!(again.len(), CAP);
}
