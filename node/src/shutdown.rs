//! SIGTERM/SIGINT → drain: readiness turns false, new upgrades are refused,
//! connected clients are closed with 1012 "reconnect" spread over the drain
//! window (so they do not all reconnect to the other nodes at once), and the
//! node stops when they are gone or the window is over.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::node::Node;
use crate::outbox::CloseReason;

/// Resolves on SIGTERM or SIGINT.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Close every connection over the drain window and wait for them to go.
pub async fn drain(node: &Arc<Node>) {
    if !node.begin_drain() {
        return;
    }
    let window = node.config.drain;
    let started = Instant::now();
    // Spread the closes over the first 80% of the window; the rest is for
    // the writers to send their close frames.
    let spread = window.mul_f64(0.8);
    let conns = node.connections();
    let total = conns.len();
    tracing::info!(
        connections = total,
        window_ms = window.as_millis() as u64,
        "drain started"
    );
    for (i, conn) in conns.into_iter().enumerate() {
        if total > 1 {
            let due = started + spread.mul_f64(i as f64 / total as f64);
            tokio::time::sleep_until(due).await;
        }
        conn.outbox.close(CloseReason::Drain);
    }
    // Connections that arrived during the spread.
    for conn in node.connections() {
        conn.outbox.close(CloseReason::Drain);
    }
    let deadline = started + window;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while node.counts().connections > 0 && Instant::now() < deadline {
        tick.tick().await;
    }
    let left = node.counts().connections;
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain window over with connections still open"
        );
    } else {
        tracing::info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drain finished"
        );
    }
}
