//! Fan-out cost: encode (once, with the native codec) and queue one
//! publication to N local members of a channel (what one publish costs the
//! node before any socket write), through the node's own publish path.
//!
//! `cargo bench -p pubmesh-node --bench fanout`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pubmesh_node::config::Config;
use pubmesh_node::conn::Conn;
use pubmesh_node::delivery::{Delivery, Target};
use pubmesh_node::frontend::native::codec::NativeCodec;
use pubmesh_node::node::{JoinRequest, Scope};
use tokio_tungstenite::tungstenite::Utf8Bytes;

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("hub_fanout");
    for subscribers in [1usize, 100, 1000, 10_000] {
        let mut config = Config::defaults();
        config.max_connections = None;
        config.outbox_bytes = usize::MAX;
        let node = pubmesh_node::build(config).expect("node");
        let codec: Arc<NativeCodec> = Arc::new(NativeCodec::new(node.node_id()));
        let since = Default::default();
        let room = ["room".to_string()];
        let conns: Vec<Arc<Conn>> = runtime.block_on(async {
            let mut conns = Vec::new();
            for i in 0..subscribers {
                let admission = node.admit().expect("admitted");
                let identity = node.identify(None);
                let conn = node
                    .open(
                        admission,
                        identity,
                        codec.clone(),
                        Some(format!("own-{i}")),
                        |_| None,
                    )
                    .await;
                let request = JoinRequest {
                    channels: &room,
                    positioned: false,
                    since: &since,
                };
                node.join(&conn, request, |_| None).await.expect("joined");
                conns.push(conn);
            }
            conns
        });
        let frame = Utf8Bytes::from(format!("{{\"t\":1,\"p\":\"{}\"}}", "x".repeat(48)));
        let target = Target::Channels(vec!["room".to_string()]);
        let mut drain = std::collections::VecDeque::new();
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, _| {
                b.iter(|| {
                    let delivery = Delivery::new(target.clone(), frame.clone());
                    let n = node.publish(delivery, Scope::Local).local_deliveries;
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
