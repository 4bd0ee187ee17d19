//! Per front-end series: connections, frames in and out, errors by code,
//! labelled with the front-end's name. Each front-end creates its series at
//! zero when its routes are mounted ([`FrontendMetrics::init`]).

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

/// `pubmesh_frontend_*` series.
pub struct FrontendMetrics {
    /// `pubmesh_frontend_connections{frontend}`: open connections.
    pub connections: IntGaugeVec,
    /// `pubmesh_frontend_messages_in_total{frontend}`: frames from clients.
    pub messages_in: IntCounterVec,
    /// `pubmesh_frontend_messages_out_total{frontend}`: frames queued to clients.
    pub messages_out: IntCounterVec,
    /// `pubmesh_frontend_errors_total{frontend,code}`: error replies and
    /// refusals, by the front-end's code.
    pub errors: IntCounterVec,
    /// `pubmesh_frontend_events_in_total{frontend,kind}`: events published
    /// to a front-end's sessions through the server API, by kind (the Cells
    /// gateway's `POST /api/events`).
    pub events_in: IntCounterVec,
}

impl FrontendMetrics {
    pub fn new(r: &Registry) -> FrontendMetrics {
        let gauge = IntGaugeVec::new(
            Opts::new(
                "pubmesh_frontend_connections",
                "Open connections, by front-end",
            ),
            &["frontend"],
        )
        .expect("valid metric");
        r.register(Box::new(gauge.clone())).expect("unique metric");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        FrontendMetrics {
            connections: gauge,
            messages_in: counter(
                "pubmesh_frontend_messages_in_total",
                "Frames received from clients, by front-end",
                &["frontend"],
            ),
            messages_out: counter(
                "pubmesh_frontend_messages_out_total",
                "Frames queued to clients, by front-end",
                &["frontend"],
            ),
            errors: counter(
                "pubmesh_frontend_errors_total",
                "Error replies and refusals, by front-end and code",
                &["frontend", "code"],
            ),
            events_in: counter(
                "pubmesh_frontend_events_in_total",
                "Events published to a front-end's sessions through the server API, by kind",
                &["frontend", "kind"],
            ),
        }
    }

    /// Create a front-end's series at zero, with every error code it uses.
    pub fn init(&self, frontend: &str, codes: &[&str]) {
        self.connections.with_label_values(&[frontend]);
        self.messages_in.with_label_values(&[frontend]);
        self.messages_out.with_label_values(&[frontend]);
        for code in codes {
            self.errors.with_label_values(&[frontend, code]);
        }
    }

    /// Count one error of `frontend`.
    pub fn error(&self, frontend: &str, code: &str) {
        self.errors.with_label_values(&[frontend, code]).inc();
    }
}
