//! Series of the per-address budgets (`pubmesh_address_*`, see
//! `crate::address`).

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// `kind` of `pubmesh_address_limited_total`: a connection refused with
/// 429 (`connection`), a socket closed with 4029 (`frame`).
pub const LIMITED_KINDS: &[&str] = &["connection", "frame"];

/// `pubmesh_address_*` series.
pub struct AddressMetrics {
    /// `pubmesh_address_limited_total{kind}`.
    pub limited: IntCounterVec,
    /// `pubmesh_address_entries`: addresses the table remembers.
    pub entries: IntGauge,
    /// `pubmesh_address_evicted_total`: addresses forgotten to make room
    /// while they still had an open socket or a spent budget.
    pub evicted: IntCounter,
}

impl AddressMetrics {
    pub fn new(r: &Registry) -> AddressMetrics {
        let limited = IntCounterVec::new(
            Opts::new(
                "pubmesh_address_limited_total",
                "Connections refused (connection) and sockets closed (frame) because their client address's budget was spent (--address-connection-rate, --address-frame-rate)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let entries = IntGauge::new(
            "pubmesh_address_entries",
            "Client addresses whose budgets the node remembers (at most --address-table-entries)",
        )
        .expect("valid metric");
        let evicted = IntCounter::new(
            "pubmesh_address_evicted_total",
            "Client addresses forgotten to make room for others while they still had an open socket or a spent budget",
        )
        .expect("valid metric");
        r.register(Box::new(limited.clone()))
            .expect("unique metric");
        r.register(Box::new(entries.clone()))
            .expect("unique metric");
        r.register(Box::new(evicted.clone()))
            .expect("unique metric");
        for kind in LIMITED_KINDS {
            limited.with_label_values(&[kind]);
        }
        AddressMetrics {
            limited,
            entries,
            evicted,
        }
    }

    /// Count one refusal of `kind` (one of [`LIMITED_KINDS`]).
    pub fn limited(&self, kind: &str) {
        self.limited.with_label_values(&[kind]).inc();
    }
}
