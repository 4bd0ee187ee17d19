//! Hub fan-out cost: queue one pre-encoded frame to N local subscribers of a
//! channel (what one publish costs the node before any socket write).
//!
//! `cargo bench -p pubmesh-node --bench fanout`

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parking_lot::Mutex;
use pubmesh_node::hub::{Conn, ConnState, Hub, Target};
use pubmesh_node::metrics::Metrics;
use pubmesh_node::outbox::Outbox;
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn conn(id: u64) -> Arc<Conn> {
    Arc::new(Conn {
        id,
        client_id: Arc::from(format!("c{id}")),
        channel_id: Arc::from(format!("own-{id}")),
        outbox: Outbox::new(usize::MAX),
        state: Mutex::new(ConnState {
            root_id: Arc::from("anon"),
            token: None,
            authenticated: false,
            expires_at: 0,
            channels: HashSet::new(),
            allowed_channels: None,
            info: None,
            positioned: HashMap::new(),
        }),
    })
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub_fanout");
    for subscribers in [1usize, 100, 1000, 10_000] {
        let hub = Hub::new(Arc::new(Metrics::new("bench")));
        let conns: Vec<Arc<Conn>> = (0..subscribers as u64).map(conn).collect();
        for c in &conns {
            hub.register(c);
            hub.subscribe(c, &["room".to_string()], 10)
                .expect("under limit");
        }
        let frame = Utf8Bytes::from(format!("{{\"t\":1,\"p\":\"{}\"}}", "x".repeat(48)));
        let target = Target::Channels(vec!["room".to_string()]);
        let mut drain = std::collections::VecDeque::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let n = hub.deliver(&target, &frame);
                    // Empty the outboxes as the writers would.
                    for c in &conns {
                        c.outbox.take(&mut drain);
                        drain.clear();
                    }
                    n
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
