//! SIGTERM: readiness turns false, clients are closed with 1012 "reconnect"
//! over the drain window, and the process exits in time.

use std::time::Duration;

use pubmesh_tests::harness::{eventually, patience, Node};

#[tokio::test]
async fn sigterm_drains_clients_with_the_reconnect_code_and_exits() {
    let mut node = Node::start(&["--drain-seconds", "5"]).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(node.client(&format!("channel_id=d{i}")).await);
    }
    node.sigterm();
    let readyz = format!("{}/readyz", node.http());
    eventually("readyz turns 503", patience(5), || {
        let readyz = readyz.clone();
        async move {
            match reqwest::get(&readyz).await {
                Ok(r) if r.status() == 503 => {
                    let body: serde_json::Value = r.json().await.expect("readyz json");
                    assert_eq!(body["ready"], false, "{body}");
                    assert!(
                        body["reason"].as_str().is_some_and(|r| !r.is_empty()),
                        "503 carries a reason: {body}"
                    );
                    Some(())
                }
                _ => None,
            }
        }
    })
    .await;
    assert_eq!(node.metric("pubmesh_draining").await, 1.0);
    assert_eq!(node.metric("pubmesh_ready").await, 0.0);
    // New upgrades are refused while draining.
    let refused = pubmesh_tests::harness::Client::connect_raw(&node.ws(""), None).await;
    assert!(refused.is_err(), "upgrade during drain must fail");
    for c in clients.iter_mut() {
        assert_eq!(
            c.expect_close().await,
            Some((1012, "reconnect".to_string()))
        );
    }
    let status = node.wait_exit(Duration::from_secs(5) + patience(10)).await;
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test]
async fn a_node_without_clients_exits_promptly_on_sigterm() {
    let mut node = Node::start(&["--drain-seconds", "30"]).await;
    node.sigterm();
    let status = node.wait_exit(patience(10)).await;
    assert!(status.success());
}
