//! Per-namespace series of the Socket.IO front-end (docs/socketio.md,
//! Metrics). Namespaces are configured, so their label set is bounded.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// `pubmesh_socketio_*` series, by namespace.
pub struct NamespaceMetrics {
    /// `pubmesh_socketio_sockets{namespace}`: sockets connected to it.
    pub sockets: IntGaugeVec,
    /// `pubmesh_socketio_events_in_total{namespace}`: client events (EVENT
    /// and BINARY_EVENT packets) received in it.
    pub events_in: IntCounterVec,
    /// `pubmesh_socketio_recoveries_total{namespace,result}`: CONNECTs that
    /// claimed a recovery, `recovered` or `fresh` (the gap was not covered).
    pub recoveries: IntCounterVec,
}

impl NamespaceMetrics {
    /// Register the series, at zero for every namespace in `namespaces`.
    /// `None` when they are registered already (the front-end mounted twice
    /// on one registry).
    pub fn register(r: &Registry, namespaces: &[&str]) -> Option<NamespaceMetrics> {
        let sockets = IntGaugeVec::new(
            Opts::new(
                "pubmesh_socketio_sockets",
                "Socket.IO sockets connected, by namespace",
            ),
            &["namespace"],
        )
        .expect("valid metric");
        r.register(Box::new(sockets.clone())).ok()?;
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).ok().map(|()| c)
        };
        let m = NamespaceMetrics {
            sockets,
            events_in: counter(
                "pubmesh_socketio_events_in_total",
                "Socket.IO client events received, by namespace",
                &["namespace"],
            )?,
            recoveries: counter(
                "pubmesh_socketio_recoveries_total",
                "Socket.IO connection-state recoveries claimed, by namespace and result",
                &["namespace", "result"],
            )?,
        };
        for n in namespaces {
            m.sockets.with_label_values(&[n]);
            m.events_in.with_label_values(&[n]);
            for result in ["recovered", "fresh"] {
                m.recoveries.with_label_values(&[n, result]);
            }
        }
        Some(m)
    }
}
