//! Metrics per front-end (`frontend` label): connections, client frames,
//! events in and frames out, and errors by code. Every series a front-end
//! documents is created at zero when the node starts.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// The label values each front-end exports at zero from the start.
pub mod labels {
    /// Front-ends with metrics of their own.
    pub const FRONTENDS: &[&str] = &["cells"];
    /// `pubmesh_frontend_frames_in_total{frontend="cells",kind}`.
    pub const CELLS_FRAMES: &[&str] = &["subscribe", "unsubscribe", "ignored", "invalid"];
    /// `pubmesh_frontend_events_in_total{frontend="cells",kind}` (configured
    /// kinds appear at their first event).
    pub const CELLS_EVENTS: &[&str] = &["tree", "meta", "task", "idm", "activity"];
    /// `pubmesh_frontend_errors_total{frontend="cells",code}`.
    pub const CELLS_ERRORS: &[&str] = &[
        "bad_json",
        "empty_jwt",
        "bad_jwt",
        "bad_claims",
        "too_many_groups",
        "rate_limited",
        "too_big",
        "bad_request",
        "unknown_kind",
    ];
}

/// Metrics per front-end.
pub struct FrontendMetrics {
    /// `pubmesh_frontend_connections{frontend}`.
    pub connections: IntGaugeVec,
    /// `pubmesh_frontend_frames_in_total{frontend,kind}`.
    pub frames_in: IntCounterVec,
    /// `pubmesh_frontend_events_in_total{frontend,kind}`: events published to it.
    pub events_in: IntCounterVec,
    /// `pubmesh_frontend_events_out_total{frontend}`: frames queued to its sessions.
    pub events_out: IntCounterVec,
    /// `pubmesh_frontend_errors_total{frontend,code}`.
    pub errors: IntCounterVec,
}

fn counters(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

impl FrontendMetrics {
    pub fn new(r: &Registry) -> FrontendMetrics {
        let connections = IntGaugeVec::new(
            Opts::new(
                "pubmesh_frontend_connections",
                "Open connections by front-end",
            ),
            &["frontend"],
        )
        .expect("valid metric");
        r.register(Box::new(connections.clone()))
            .expect("unique metric");
        let m = FrontendMetrics {
            connections,
            frames_in: counters(
                r,
                "pubmesh_frontend_frames_in_total",
                "Client frames by front-end and kind",
                &["frontend", "kind"],
            ),
            events_in: counters(
                r,
                "pubmesh_frontend_events_in_total",
                "Events published to a front-end's sessions (server API), by kind",
                &["frontend", "kind"],
            ),
            events_out: counters(
                r,
                "pubmesh_frontend_events_out_total",
                "Event frames queued to a front-end's sessions",
                &["frontend"],
            ),
            errors: counters(
                r,
                "pubmesh_frontend_errors_total",
                "Errors by front-end and code",
                &["frontend", "code"],
            ),
        };
        for frontend in labels::FRONTENDS {
            m.connections.with_label_values(&[frontend]);
            m.events_out.with_label_values(&[frontend]);
        }
        for kind in labels::CELLS_FRAMES {
            m.frames_in.with_label_values(&["cells", kind]);
        }
        for kind in labels::CELLS_EVENTS {
            m.events_in.with_label_values(&["cells", kind]);
        }
        for code in labels::CELLS_ERRORS {
            m.errors.with_label_values(&["cells", code]);
        }
        m
    }
}
