//! Every metric the node exports, in one place.
//!
//! Gauges that mirror registry sizes are updated as the registries change, so a
//! scrape never walks a map. Each node owns its own [`Registry`]; tests may run
//! several nodes in one process.

mod address;
mod frontend;

pub use address::AddressMetrics;
pub use frontend::FrontendMetrics;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Latency buckets (seconds) from 50 µs to 5 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Label values of the labelled counters, as documented in docs/cluster.md.
/// Each is created at zero when the node starts.
pub mod labels {
    /// `pubmesh_connections_closed_total{reason}`: `client` or a server close.
    pub const CLOSED_REASONS: &[&str] = &[
        "client",
        "drain",
        "too_big",
        "unauthorized",
        "disconnected",
        "slow_consumer",
        "rate_limited",
        "invalid_utf8",
        "protocol_error",
        "ping_timeout",
        "heartbeat_timeout",
        "bad_frame",
    ];
    /// `pubmesh_dropped_total{reason}`.
    pub const DROPPED_REASONS: &[&str] = &["slow_consumer", "closed"];
    /// `pubmesh_errors_total{code}`: every error code a client or API caller can get.
    pub const ERROR_CODES: &[&str] = &[
        "bad_json",
        "bad_request",
        "forbidden",
        "unauthorized",
        "too_many_channels",
        "capacity",
        "no_history",
        "no_presence",
        "not_found",
        "bad_position",
        "unavailable",
        "no_backend",
        "backend_timeout",
        "backend_error",
        "backend_unavailable",
        "rate_limited",
        "internal",
    ];
    /// `pubmesh_messages_in_total{kind}`: client frame types and API calls.
    pub const MESSAGE_IN_KINDS: &[&str] = &[
        "connection",
        "change_user",
        "channel",
        "user",
        "client",
        "walker",
        "subscribe",
        "unsubscribe",
        "history",
        "presence",
        "invalid",
        "api_channels",
        "api_users",
        "api_clients",
        "api_broadcast",
        "api_disconnect",
        "api_events",
    ];
    /// `pubmesh_messages_out_total{kind}`.
    pub const MESSAGE_OUT_KINDS: &[&str] = &["channels", "users", "clients", "broadcast"];
    /// `pubmesh_relay_published_total{kind}` and `pubmesh_relay_received_total{kind}`.
    pub const ENVELOPE_KINDS: &[&str] = &[
        "deliver",
        "heartbeat",
        "leaving",
        "disconnect",
        "channels_request",
        "channels_reply",
        "publication",
        "batch",
    ];
    /// `pubmesh_relay_dropped_total{reason}`.
    pub const RELAY_DROPPED_REASONS: &[&str] = &[
        "queue_full",
        "redis_down",
        "redis_error",
        "lagged",
        "decode",
        "duplicate",
        "expired",
    ];
    /// `pubmesh_recoveries_total{result}`.
    pub const RECOVERY_RESULTS: &[&str] = &["ok", "failed", "repaired", "unrepaired"];
    /// `listener` of `pubmesh_http_connections` and `pubmesh_http_refused_total`.
    pub const LISTENERS: &[&str] = &["client", "admin"];
    /// `pubmesh_http_timeouts_total{phase}`: a request's head (`header`), or
    /// its upgrade or body (`handshake`), did not arrive in time.
    pub const HTTP_TIMEOUT_PHASES: &[&str] = &["header", "handshake"];
}

/// The node's metrics. Cheap to clone handles live inside; share it in an `Arc`.
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntGauge,
    pub connections_accepted: IntCounter,
    pub connections_closed: IntCounterVec,
    pub subscriptions: IntGauge,
    pub channels: IntGauge,
    pub users: IntGauge,
    pub messages_in: Labelled,
    pub messages_out: Labelled,
    pub deliveries: IntCounter,
    pub dropped: IntCounterVec,
    pub slow_consumer_disconnects: IntCounter,
    pub errors: IntCounterVec,
    pub api_latency: HistogramVec,
    pub fanout_latency: Histogram,
    pub open_files_limit: IntGauge,
    pub draining: IntGauge,
    pub ready: IntGauge,
    pub relay_up: IntGauge,
    pub relay_published: Labelled,
    pub relay_received: Labelled,
    pub relay_pipeline_depth: IntGauge,
    pub relay_roundtrip: Histogram,
    pub cross_node_latency: Histogram,
    pub relay_subscriptions: IntGauge,
    pub relay_resubscribes: IntCounter,
    pub relay_subscriber_reconnects: IntCounter,
    pub relay_dropped: IntCounterVec,
    pub relay_peers: IntGauge,
    pub history_appends: IntCounter,
    pub history_reads: IntCounter,
    pub recoveries: IntCounterVec,
    pub recoveries_in_progress: IntGauge,
    pub recovery_held_bytes: IntGauge,
    pub subscriptions_revoked: IntCounter,
    pub presence_size: IntGauge,
    pub relay_queue_bytes: IntGauge,
    pub relay_retried: IntCounter,
    pub relay_batched: IntCounter,
    pub relay_skipped: IntCounter,
    pub relay_addressed: IntCounter,
    pub relay_server_up: IntGaugeVec,
    pub relay_interest_ops: IntCounter,
    pub relay_interest_pending: IntGauge,
    pub relay_join_timeouts: IntCounter,
    pub presence_gone_leaves: IntCounter,
    /// Per front-end series (`pubmesh_frontend_*`).
    pub frontend: FrontendMetrics,
    pub idempotent_duplicates: IntCounter,
    pub idempotent_dropped: IntCounter,
    pub idempotency_keys: IntGauge,
    pub idempotency_evicted: IntCounter,
    pub channel_churn_refused: IntCounter,
    pub http_connections: IntGaugeVec,
    pub http_refused: IntCounterVec,
    pub http_timeouts: IntCounterVec,
    /// Per client address budgets (`pubmesh_address_*`).
    pub address: AddressMetrics,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A counter family of one label whose known values are resolved once.
/// Counting a known value is one atomic add; the family's own
/// `with_label_values` (still there through `Deref`) hashes the value, takes
/// the family's lock and clones the series, which the per-message paths
/// (a frame in, a publish out, an envelope relayed or received) paid for
/// every message.
pub struct Labelled {
    family: IntCounterVec,
    known: Box<[(&'static str, IntCounter)]>,
}

impl Labelled {
    fn new(family: IntCounterVec, values: &[&'static str]) -> Self {
        let known = values
            .iter()
            .map(|value| (*value, family.with_label_values(&[value])))
            .collect();
        Labelled { family, known }
    }

    /// Count one for `value`: a known value's series directly, any other
    /// through the family.
    pub fn inc(&self, value: &str) {
        match self.known.iter().find(|(known, _)| *known == value) {
            Some((_, counter)) => counter.inc(),
            None => self.family.with_label_values(&[value]).inc(),
        }
    }
}

impl std::ops::Deref for Labelled {
    type Target = IntCounterVec;

    fn deref(&self) -> &IntCounterVec {
        &self.family
    }
}

fn labelled(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&'static str],
) -> Labelled {
    Labelled::new(counter_vec(r, name, help, label), values)
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    pub fn new(node_id: &str) -> Metrics {
        let r = Registry::new();
        let info = IntGaugeVec::new(
            Opts::new(
                "pubmesh_info",
                "Constant 1, labelled with the node id and version",
            ),
            &["node_id", "version"],
        )
        .expect("valid metric");
        r.register(Box::new(info.clone())).expect("unique metric");
        info.with_label_values(&[node_id, env!("CARGO_PKG_VERSION")])
            .set(1);
        let api_latency = HistogramVec::new(
            HistogramOpts::new(
                "pubmesh_api_request_duration_seconds",
                "Server API request latency by route",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        r.register(Box::new(api_latency.clone()))
            .expect("unique metric");
        let m = Metrics {
            connections: gauge(&r, "pubmesh_connections", "Open client connections"),
            connections_accepted: counter(
                &r,
                "pubmesh_connections_accepted_total",
                "Client connections accepted",
            ),
            connections_closed: counter_vec(
                &r,
                "pubmesh_connections_closed_total",
                "Client connections closed, by reason",
                "reason",
            ),
            subscriptions: gauge(
                &r,
                "pubmesh_subscriptions",
                "Channel memberships of local connections",
            ),
            channels: gauge(&r, "pubmesh_channels", "Channels with local members"),
            users: gauge(&r, "pubmesh_users", "Users with local connections"),
            messages_in: labelled(
                &r,
                "pubmesh_messages_in_total",
                "Frames received from clients, by type",
                "kind",
                labels::MESSAGE_IN_KINDS,
            ),
            messages_out: labelled(
                &r,
                "pubmesh_messages_out_total",
                "Messages published through this node, by target kind",
                "kind",
                labels::MESSAGE_OUT_KINDS,
            ),
            deliveries: counter(
                &r,
                "pubmesh_deliveries_total",
                "Frames queued to local connections",
            ),
            dropped: counter_vec(
                &r,
                "pubmesh_dropped_total",
                "Frames not delivered, by reason",
                "reason",
            ),
            slow_consumer_disconnects: counter(
                &r,
                "pubmesh_slow_consumer_disconnects_total",
                "Connections closed because their outbox overflowed",
            ),
            errors: counter_vec(
                &r,
                "pubmesh_errors_total",
                "Error replies sent to clients, by code",
                "code",
            ),
            api_latency,
            fanout_latency: histogram(
                &r,
                "pubmesh_fanout_duration_seconds",
                "Time to queue one message to every local recipient",
            ),
            open_files_limit: gauge(
                &r,
                "pubmesh_open_files_limit",
                "Soft limit on open files (caps connections)",
            ),
            draining: gauge(&r, "pubmesh_draining", "1 while the node drains"),
            ready: gauge(&r, "pubmesh_ready", "1 while /readyz answers 200"),
            relay_up: gauge(
                &r,
                "pubmesh_relay_up",
                "1 while the relay reaches every broker it needs",
            ),
            relay_published: labelled(
                &r,
                "pubmesh_relay_published_total",
                "Envelopes published to the relay, by kind",
                "kind",
                labels::ENVELOPE_KINDS,
            ),
            relay_received: labelled(
                &r,
                "pubmesh_relay_received_total",
                "Envelopes received from the relay, by kind",
                "kind",
                labels::ENVELOPE_KINDS,
            ),
            relay_pipeline_depth: gauge(
                &r,
                "pubmesh_relay_pipeline_depth",
                "Publishes queued or in flight to the relay",
            ),
            relay_roundtrip: histogram(
                &r,
                "pubmesh_relay_roundtrip_seconds",
                "Round trip of a relay publish batch",
            ),
            cross_node_latency: histogram(
                &r,
                "pubmesh_cross_node_latency_seconds",
                "Origin publish time to local delivery for relayed messages",
            ),
            relay_subscriptions: gauge(
                &r,
                "pubmesh_relay_subscriptions",
                "Broker channels this node is subscribed to",
            ),
            relay_resubscribes: counter(
                &r,
                "pubmesh_relay_resubscribes_total",
                "Times the relay resubscribed after a reconnect",
            ),
            relay_subscriber_reconnects: counter(
                &r,
                "pubmesh_relay_subscriber_reconnects_total",
                "Times a relay subscriber connection came back after it was lost (what Redis held for it is lost)",
            ),
            relay_dropped: counter_vec(
                &r,
                "pubmesh_relay_dropped_total",
                "Envelopes the relay dropped, by reason",
                "reason",
            ),
            relay_peers: gauge(&r, "pubmesh_relay_peers", "Other live nodes seen"),
            history_appends: counter(
                &r,
                "pubmesh_history_appends_total",
                "Publications appended to channel history",
            ),
            history_reads: counter(
                &r,
                "pubmesh_history_reads_total",
                "History reads (history frames, API calls, recoveries)",
            ),
            recoveries: counter_vec(
                &r,
                "pubmesh_recoveries_total",
                "Subscriptions that asked to recover (ok, failed) and gaps in positioned ones read from history (repaired, unrepaired)",
                "result",
            ),
            recoveries_in_progress: gauge(
                &r,
                "pubmesh_recoveries_in_progress",
                "Positioned subscribes reading history (live publications held back meanwhile)",
            ),
            recovery_held_bytes: gauge(
                &r,
                "pubmesh_recovery_held_bytes",
                "Bytes of live publications held back for subscriptions reading history",
            ),
            subscriptions_revoked: counter(
                &r,
                "pubmesh_subscriptions_revoked_total",
                "Memberships left because a new identity may not be in the channel",
            ),
            presence_size: gauge(
                &r,
                "pubmesh_presence_entries",
                "Presence entries of local connections",
            ),
            relay_queue_bytes: gauge(
                &r,
                "pubmesh_relay_queue_bytes",
                "Bytes of envelopes waiting for Redis (queued, in flight, or held through an outage)",
            ),
            relay_retried: counter(
                &r,
                "pubmesh_relay_retried_total",
                "Envelopes sent again after Redis did not confirm them",
            ),
            relay_batched: counter(
                &r,
                "pubmesh_relay_batched_total",
                "Envelopes that shared one PUBLISH (a batch envelope) with an earlier envelope for the same Redis channel",
            ),
            relay_skipped: counter(
                &r,
                "pubmesh_relay_skipped_total",
                "Channel or user envelopes not published to Redis because every peer's known interest lacks the topic",
            ),
            relay_addressed: counter(
                &r,
                "pubmesh_relay_addressed_total",
                "Channel or user envelopes published to the inbox of the one peer whose known interest holds the topic, instead of to the topic",
            ),
            relay_server_up: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "pubmesh_relay_server_up",
                        "1 while a Redis server answers the readiness probe (PING and canary)",
                    ),
                    &["server"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            relay_interest_ops: counter(
                &r,
                "pubmesh_relay_interest_ops_total",
                "Redis channels subscribed or unsubscribed",
            ),
            relay_interest_pending: gauge(
                &r,
                "pubmesh_relay_interest_pending",
                "Subscription changes held back by --relay-interest-rate",
            ),
            relay_join_timeouts: counter(
                &r,
                "pubmesh_relay_join_timeouts_total",
                "Joins refused (unavailable) because Redis did not confirm their subscriptions within --relay-join-timeout-ms",
            ),
            presence_gone_leaves: counter(
                &r,
                "pubmesh_presence_gone_leaves_total",
                "Presence leave events sent for members of nodes declared gone",
            ),
            frontend: FrontendMetrics::new(&r),
            idempotent_duplicates: counter(
                &r,
                "pubmesh_idempotent_duplicates_total",
                "Keyed publishes answered as duplicates of an earlier one (nothing sent again)",
            ),
            idempotent_dropped: counter(
                &r,
                "pubmesh_idempotent_dropped_total",
                "Keyed deliveries from other nodes dropped because their key was delivered before",
            ),
            idempotency_keys: gauge(
                &r,
                "pubmesh_idempotency_keys",
                "Idempotency keys this node remembers",
            ),
            idempotency_evicted: counter(
                &r,
                "pubmesh_idempotency_evicted_total",
                "Idempotency keys forgotten before their window ended (--idempotency-max-bytes)",
            ),
            channel_churn_refused: counter(
                &r,
                "pubmesh_channel_churn_refused_total",
                "Subscribes refused because the socket changed too many distinct channels (--client-channel-churn)",
            ),
            http_connections: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "pubmesh_http_connections",
                        "Open TCP connections still speaking HTTP (before an upgrade, API and health requests, idle keep-alive), by listener",
                    ),
                    &["listener"],
                )
                .expect("valid metric");
                r.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            http_refused: counter_vec(
                &r,
                "pubmesh_http_refused_total",
                "TCP connections refused at the listener's cap (--max-connections, --max-admin-connections)",
                "listener",
            ),
            http_timeouts: counter_vec(
                &r,
                "pubmesh_http_timeouts_total",
                "HTTP connections closed because a request's head (header) or its upgrade or body (handshake) came too late",
                "phase",
            ),
            address: AddressMetrics::new(&r),
            registry: r,
        };
        m.ready.set(1);
        m.relay_up.set(1);
        m.init_series();
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        m
    }

    /// Create every labelled series a dashboard or alert reads, at zero, so a
    /// node at rest exposes them all and `rate()` has a baseline from the
    /// first scrape (a series born at its first event hides that event).
    fn init_series(&self) {
        let sets: [(&IntCounterVec, &[&str]); 10] = [
            (&self.connections_closed, labels::CLOSED_REASONS),
            (&self.dropped, labels::DROPPED_REASONS),
            (&self.errors, labels::ERROR_CODES),
            (&*self.messages_in, labels::MESSAGE_IN_KINDS),
            (&*self.messages_out, labels::MESSAGE_OUT_KINDS),
            (&*self.relay_published, labels::ENVELOPE_KINDS),
            (&*self.relay_received, labels::ENVELOPE_KINDS),
            (&self.relay_dropped, labels::RELAY_DROPPED_REASONS),
            (&self.http_refused, labels::LISTENERS),
            (&self.http_timeouts, labels::HTTP_TIMEOUT_PHASES),
        ];
        for (vec, values) in sets {
            for value in values {
                vec.with_label_values(&[value]);
            }
        }
        for result in labels::RECOVERY_RESULTS {
            self.recoveries.with_label_values(&[result]);
        }
        for listener in labels::LISTENERS {
            self.http_connections.with_label_values(&[listener]);
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

#[cfg(test)]
mod tests;
