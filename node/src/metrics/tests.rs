use super::*;

#[test]
fn render_lists_the_unlabelled_metrics() {
    let m = Metrics::new("n1");
    m.deliveries.inc_by(3);
    let text = m.render();
    assert!(text.contains("pubmesh_deliveries_total 3"), "{text}");
    assert!(text.contains("pubmesh_info{node_id=\"n1\""), "{text}");
    assert!(
        text.contains("pubmesh_relay_roundtrip_seconds_bucket"),
        "{text}"
    );
}

#[test]
fn a_node_at_rest_exposes_every_labelled_series_at_zero() {
    let text = Metrics::new("n1").render();
    for reason in labels::RELAY_DROPPED_REASONS {
        let line = format!("pubmesh_relay_dropped_total{{reason=\"{reason}\"}} 0");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    for reason in labels::CLOSED_REASONS {
        let line = format!("pubmesh_connections_closed_total{{reason=\"{reason}\"}} 0");
        assert!(text.contains(&line), "{line} missing");
    }
    for code in labels::ERROR_CODES {
        let line = format!("pubmesh_errors_total{{code=\"{code}\"}} 0");
        assert!(text.contains(&line), "{line} missing");
    }
    assert!(text.contains("pubmesh_recoveries_total{result=\"failed\"} 0"));
}

#[test]
fn a_labelled_family_counts_known_and_other_values_in_its_series() {
    let m = Metrics::new("n1");
    m.relay_received.inc("deliver");
    m.relay_received.inc("deliver");
    // Not among the values resolved at start: counted through the family.
    m.relay_received.inc("interest_ack");
    m.messages_out.inc("users");
    // The family and the resolved series are one: both paths add up.
    m.relay_received.with_label_values(&["deliver"]).inc();
    let text = m.render();
    for line in [
        "pubmesh_relay_received_total{kind=\"deliver\"} 3",
        "pubmesh_relay_received_total{kind=\"interest_ack\"} 1",
        "pubmesh_relay_received_total{kind=\"batch\"} 0",
        "pubmesh_messages_out_total{kind=\"users\"} 1",
        "pubmesh_messages_out_total{kind=\"channels\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn process_metrics_are_exported() {
    let text = Metrics::new("n1").render();
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(text.contains(&format!("\n{name} ")), "{name} missing");
    }
}
