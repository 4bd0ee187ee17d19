//! Encode/decode cost of typical envelopes.
//!
//! `cargo bench -p pubmesh-cluster-proto`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pubmesh_cluster_proto::{decode, encode, Body, Delivery, Envelope, NodeInfo, Targets};

fn deliver(frame_len: usize) -> Envelope {
    let mut frame = br#"{"type":"channel","channel":"news","data":{"x":""#.to_vec();
    frame.resize(frame_len - 3, b'a');
    frame.extend_from_slice(br#""}}"#);
    Envelope::new(
        "node-1",
        42,
        Body::Deliver(Delivery {
            targets: Targets::Channels(vec!["news".into()]),
            frame: Bytes::from(frame),
            exclude_client: Some("1730887348:f46d85203c704c099e9f44e948322a20:node-1".into()),
            extra: Default::default(),
        }),
    )
}

fn heartbeat() -> Envelope {
    Envelope::new(
        "node-1",
        43,
        Body::Heartbeat(NodeInfo {
            node_id: "node-1".into(),
            started_at_unix: 1_730_887_348,
            connections: 10_000,
            users: 9_000,
            channels: 500,
            subscriptions: 20_000,
            api_addr: Some("10.0.0.1:8000".into()),
            version: "0.1.0".into(),
            ready: true,
        }),
    )
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("deliver_256B", deliver(256)),
        ("deliver_16KiB", deliver(16 * 1024)),
        ("heartbeat", heartbeat()),
    ];
    for (name, env) in cases {
        let wire = encode(&env);
        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_function("encode", |b| b.iter(|| encode(black_box(&env))));
        group.bench_function("decode", |b| b.iter(|| decode(black_box(&wire)).unwrap()));
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
