//! Round trips, pinned bytes and hostile input for the codec.

use bytes::Bytes;

use crate::*;

/// One fixed envelope per kind (and per targets variant), with the hex of its
/// encoding. If one of these changes, the wire format changed: bump
/// `PROTOCOL_VERSION` or undo the change.
fn golden() -> Vec<(&'static str, Envelope, &'static str)> {
    // Version 1 bytes: what older nodes send; they must keep decoding.
    let env = |body| Envelope {
        version: 1,
        origin: "n1".into(),
        seq: 7,
        sent_at_micros: 1_700_000_000_000_000,
        body,
    };
    let deliver = |targets, exclude_client| {
        env(Body::Deliver(Delivery {
            targets,
            frame: Bytes::from_static(b"{}"),
            exclude_client,
            extra: Extra::default(),
        }))
    };
    let env2 = |body| Envelope {
        version: 2,
        origin: "n1".into(),
        seq: 7,
        sent_at_micros: 1_700_000_000_000_000,
        body,
    };
    let extra = Extra {
        channel: Some("a".into()),
        event: Some("ev".into()),
        kind: 1,
        origin_client: Some("c1".into()),
        audience: Some(Bytes::from_static(b"x")),
        idempotency: None,
    };
    vec![
        (
            "deliver channels",
            deliver(
                Targets::Channels(vec!["a".into(), "b".into()]),
                Some("c1".into()),
            ),
            "504d000101\
             94a26e3107cf00060a24181e4000\
             93920192a161a162c4027b7da26331",
        ),
        (
            "deliver users",
            deliver(Targets::Users(vec!["u".into()]), None),
            "504d000101\
             94a26e3107cf00060a24181e4000\
             93920291a175c4027b7dc0",
        ),
        (
            "deliver clients",
            deliver(Targets::Clients(vec!["x".into()]), None),
            "504d000101\
             94a26e3107cf00060a24181e4000\
             93920391a178c4027b7dc0",
        ),
        (
            "deliver all",
            deliver(Targets::All, None),
            "504d000101\
             94a26e3107cf00060a24181e4000\
             939104c4027b7dc0",
        ),
        (
            "heartbeat",
            env(Body::Heartbeat(NodeInfo {
                node_id: "n1".into(),
                started_at_unix: 1_700_000_000,
                connections: 3,
                users: 2,
                channels: 1,
                subscriptions: 300,
                api_addr: Some("h:1".into()),
                version: "0.1.0".into(),
                ready: true,
            })),
            "504d000102\
             94a26e3107cf00060a24181e4000\
             99a26e31ce6553f100030201cd012ca3683a31a5302e312e30c3",
        ),
        (
            "leaving",
            env(Body::Leaving {
                node_id: "n1".into(),
            }),
            "504d000103\
             94a26e3107cf00060a24181e4000\
             91a26e31",
        ),
        (
            "disconnect",
            env(Body::Disconnect {
                client_ids: vec!["c".into()],
                root_ids: vec!["r".into(), "s".into()],
            }),
            "504d000104\
             94a26e3107cf00060a24181e4000\
             9291a16392a172a173",
        ),
        (
            "channels request",
            env(Body::ChannelsRequest {
                request_id: 9,
                reply_to: "p.n.n1".into(),
            }),
            "504d000105\
             94a26e3107cf00060a24181e4000\
             9209a6702e6e2e6e31",
        ),
        (
            "channels reply",
            env(Body::ChannelsReply {
                request_id: 9,
                channels: vec![("a".into(), 2), ("bb".into(), 70_000)],
            }),
            "504d000106\
             94a26e3107cf00060a24181e4000\
             92099292a1610292a26262ce00011170",
        ),
        (
            "publication",
            env(Body::Publication {
                channel: "c".into(),
                frame: Bytes::from_static(b"{}"),
                offset: 5,
                epoch: "ab".into(),
                extra: Extra::default(),
            }),
            "504d000107\
             94a26e3107cf00060a24181e4000\
             92a163c4027b7d\
             350a61620a",
        ),
        (
            "deliver v2",
            env2(Body::Deliver(Delivery {
                targets: Targets::Channels(vec!["a".into()]),
                frame: Bytes::from_static(b"{}"),
                exclude_client: None,
                extra: extra.clone(),
            })),
            "504d000201\
             94a26e3107cf00060a24181e4000\
             94920191a161c4027b7dc0\
             95a161a2657601a26331c40178",
        ),
        (
            // A keyed publish: `Extra` gains a sixth element.
            "deliver v2 with an idempotency key",
            env2(Body::Deliver(Delivery {
                targets: Targets::Channels(vec!["a".into()]),
                frame: Bytes::from_static(b"{}"),
                exclude_client: None,
                extra: Extra {
                    idempotency: Some("api\nk".into()),
                    ..Extra::default()
                },
            })),
            "504d000201\
             94a26e3107cf00060a24181e4000\
             94920191a161c4027b7dc0\
             96c0c000c0c0a56170690a6b",
        ),
        (
            "deliver v2 plain",
            env2(Body::Deliver(Delivery {
                targets: Targets::All,
                frame: Bytes::from_static(b"{}"),
                exclude_client: None,
                extra: Extra::default(),
            })),
            "504d000201\
             94a26e3107cf00060a24181e4000\
             949104c4027b7dc0\
             95c0c000c0c0",
        ),
        (
            "publication v2",
            env2(Body::Publication {
                channel: "c".into(),
                frame: Bytes::from_static(b"{}"),
                offset: 5,
                epoch: "ab".into(),
                extra: Extra {
                    channel: None,
                    ..extra.clone()
                },
            }),
            "504d000207\
             94a26e3107cf00060a24181e4000\
             93a163c4027b7d\
             95c0a2657601a26331c40178\
             350a61620a",
        ),
        (
            "batch of a v1 and a v2 delivery",
            env2(Body::Batch(vec![
                deliver(Targets::Channels(vec!["a".into()]), None),
                env2(Body::Deliver(Delivery {
                    targets: Targets::Users(vec!["u".into()]),
                    frame: Bytes::from_static(b"{}"),
                    exclude_client: None,
                    extra: extra.clone(),
                })),
            ])),
            "504d000208\
             94a26e3107cf00060a24181e4000\
             92\
             c41e504d00010194a26e3107cf00060a24181e400093920191a161c4027b7dc0\
             c42b504d00020194a26e3107cf00060a24181e400094920291a175c4027b7dc0\
             95a161a2657601a26331c40178",
        ),
        (
            "interest change",
            env2(Body::Interest {
                from: 4,
                to: 5,
                added: vec!["p.ch.{a}".into()],
                removed: vec!["p.u.b".into()],
            }),
            "504d000209\
             94a26e3107cf00060a24181e4000\
             94040591a8702e63682e7b617d91a5702e752e62",
        ),
        (
            "interest beacon",
            env2(Body::Interest {
                from: 5,
                to: 5,
                added: vec![],
                removed: vec![],
            }),
            "504d000209\
             94a26e3107cf00060a24181e4000\
             9405059090",
        ),
        (
            "interest request",
            env2(Body::InterestRequest {
                node_id: "n2".into(),
            }),
            "504d00020a\
             94a26e3107cf00060a24181e4000\
             91a26e32",
        ),
        (
            "interest snapshot part",
            env2(Body::InterestSnapshot {
                version: 5,
                part: 0,
                last: true,
                topics: vec!["p.ch.{a}".into()],
            }),
            "504d00020b\
             94a26e3107cf00060a24181e4000\
             940500c391a8702e63682e7b617d",
        ),
        (
            "interest ack",
            env2(Body::InterestAck {
                acks: vec![("n2".into(), 5)],
            }),
            "504d00020c\
             94a26e3107cf00060a24181e4000\
             919192a26e3205",
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn every_variant_round_trips() {
    for (name, env, _) in golden() {
        let wire = encode(&env);
        assert_eq!(decode(&wire).as_ref(), Ok(&env), "{name}");
        assert_eq!(peek_kind(&wire), Ok(env.body.kind()), "{name}");
    }
}

#[test]
fn golden_bytes_are_pinned() {
    for (name, env, expected) in golden() {
        let expected = unhex(expected);
        assert_eq!(hex(&encode(&env)), hex(&expected), "{name}: format changed");
        assert_eq!(
            decode(&expected),
            Ok(env),
            "{name}: pinned bytes no longer decode"
        );
    }
}

#[test]
fn golden_set_covers_every_kind() {
    let kinds: Vec<Kind> = golden().iter().map(|(_, e, _)| e.body.kind()).collect();
    for kind in Kind::ALL {
        assert!(kinds.contains(&kind), "{kind} has no golden bytes");
    }
}

#[test]
fn publication_head_plus_position_tail_decodes() {
    let mut wire = encode_publication_head("n9", 3, "room", b"{\"a\":1}", &Extra::default());
    wire.extend_from_slice(b"42\nep0ch\n");
    let env = decode(&wire).expect("decodes");
    assert_eq!(env.origin, "n9");
    assert_eq!(
        env.body,
        Body::Publication {
            channel: "room".into(),
            frame: Bytes::from_static(b"{\"a\":1}"),
            offset: 42,
            epoch: "ep0ch".into(),
            extra: Extra::default(),
        }
    );
    for bad in [
        &b""[..],
        b"42",
        b"x\ne\n",
        b"1\n\n",
        b"\ne\n",
        b"1\ne",
        b"1\ne\nx",
    ] {
        let mut wire = encode_publication_head("n9", 3, "room", b"{}", &Extra::default());
        wire.extend_from_slice(bad);
        assert!(decode(&wire).is_err(), "{bad:?}");
    }
}

#[test]
fn version_1_and_2_decode_to_the_same_message() {
    // The same "deliver all" in both layouts: v1 has no extra, so it decodes
    // with the default one; v2 carries it explicitly.
    let v1 = decode(&unhex(golden()[3].2)).expect("v1 decodes");
    let plain = golden()
        .into_iter()
        .find(|(name, _, _)| *name == "deliver v2 plain")
        .expect("in the set");
    let v2 = decode(&unhex(plain.2)).expect("v2 decodes");
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(v1.body, v2.body);
    // Encoding keeps each envelope's version, so a v1 envelope re-encodes to
    // the v1 bytes.
    assert_eq!(hex(&encode(&v1)), unhex_string(golden()[3].2));
}

fn unhex_string(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

#[test]
fn kind_tags_are_stable() {
    let tags: Vec<(u8, &str)> = Kind::ALL.iter().map(|k| (k.tag(), k.as_str())).collect();
    assert_eq!(
        tags,
        [
            (1, "deliver"),
            (2, "heartbeat"),
            (3, "leaving"),
            (4, "disconnect"),
            (5, "channels_request"),
            (6, "channels_reply"),
            (7, "publication"),
            (8, "batch"),
            (9, "interest"),
            (10, "interest_request"),
            (11, "interest_snapshot"),
            (12, "interest_ack"),
        ]
    );
    for kind in Kind::ALL {
        assert_eq!(Kind::from_tag(kind.tag()), Some(kind));
    }
    assert_eq!(Kind::from_tag(0), None);
    assert_eq!(Kind::from_tag(13), None);
}

#[test]
fn large_and_unusual_values_round_trip() {
    let frame = "é".repeat(100_000);
    let env = Envelope {
        version: PROTOCOL_VERSION,
        origin: "x".repeat(MAX_NODE_ID_LEN),
        seq: u64::MAX,
        sent_at_micros: 0,
        body: Body::Deliver(Delivery {
            targets: Targets::Channels((0..5000).map(|i| format!("ch.{i}")).collect()),
            frame: Bytes::from(frame),
            exclude_client: Some(String::new()),
            extra: Extra {
                event: Some("é".repeat(1000)),
                ..Extra::default()
            },
        }),
    };
    assert_eq!(decode(&encode(&env)), Ok(env));

    let empty = Envelope::new(
        "n-2_B",
        0,
        Body::Disconnect {
            client_ids: vec![],
            root_ids: vec![],
        },
    );
    assert_eq!(decode(&encode(&empty)), Ok(empty));
}

#[test]
fn another_version_is_refused_loudly() {
    let (_, mut env, _) = golden().remove(0);
    env.version = 3;
    let wire = encode(&env);
    assert_eq!(
        decode(&wire),
        Err(DecodeError::Version {
            got: 3,
            expected: PROTOCOL_VERSION
        })
    );
    assert_eq!(
        peek_kind(&[b'P', b'M', 0x12, 0x34]),
        Err(DecodeError::Truncated { len: 4 })
    );
    assert_eq!(
        decode(&[b'P', b'M', 0x12, 0x34, 1, 0x90]),
        Err(DecodeError::Version {
            got: 0x1234,
            expected: PROTOCOL_VERSION
        })
    );
}

#[test]
fn header_errors_are_specific() {
    assert_eq!(decode(&[]), Err(DecodeError::Truncated { len: 0 }));
    assert_eq!(decode(b"PM\0"), Err(DecodeError::Truncated { len: 3 }));
    assert_eq!(
        decode(b"{\"type\":1}"),
        Err(DecodeError::BadMagic { got: *b"{\"" })
    );
    assert_eq!(
        decode(&[b'P', b'M', 0, 1, 0]),
        Err(DecodeError::UnknownKind { tag: 0 })
    );
    assert_eq!(
        decode(&[b'P', b'M', 0, 1, 200, 0x90]),
        Err(DecodeError::UnknownKind { tag: 200 })
    );
    let huge = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        decode(&huge),
        Err(DecodeError::TooLarge {
            len: MAX_ENVELOPE_BYTES + 1,
            max: MAX_ENVELOPE_BYTES
        })
    );
}

#[test]
fn every_truncation_is_an_error() {
    for (name, env, _) in golden() {
        let wire = encode(&env);
        for cut in 0..wire.len() {
            assert!(decode(&wire[..cut]).is_err(), "{name} cut at {cut} decoded");
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    for (_, env, _) in golden() {
        let mut wire = encode(&env).to_vec();
        wire.push(0xc0);
        let expected = if env.body.kind() == Kind::Publication {
            // A publication's tail is the position: anything after it breaks it.
            DecodeError::Malformed {
                kind: Kind::Publication,
                reason: "bad position tail".into(),
            }
        } else {
            DecodeError::TrailingBytes {
                kind: env.body.kind(),
                len: 1,
            }
        };
        assert_eq!(decode(&wire), Err(expected));
    }
}

#[test]
fn payload_of_the_wrong_kind_is_malformed() {
    // A Leaving payload under the Disconnect tag.
    let mut wire = encode(&Envelope::new(
        "n1",
        1,
        Body::Leaving {
            node_id: "n1".into(),
        },
    ))
    .to_vec();
    wire[4] = Kind::Disconnect.tag();
    assert!(matches!(
        decode(&wire),
        Err(DecodeError::Malformed {
            kind: Kind::Disconnect,
            ..
        })
    ));
}

#[test]
fn unknown_targets_tag_is_malformed() {
    // "deliver all" with the targets tag 4 replaced by 9.
    let mut wire = unhex(golden()[3].2);
    let at = wire.len() - 6; // ... 91 04 c4 02 7b 7d c0
    assert_eq!(wire[at], 4);
    wire[at] = 9;
    assert!(matches!(
        decode(&wire),
        Err(DecodeError::Malformed {
            kind: Kind::Deliver,
            ..
        })
    ));
}

#[test]
fn bad_node_ids_and_frames_are_refused() {
    let bad_origin = Envelope::new(
        "n.1",
        1,
        Body::Leaving {
            node_id: "n1".into(),
        },
    );
    assert_eq!(
        decode(&encode(&bad_origin)),
        Err(DecodeError::InvalidNodeId {
            kind: Kind::Leaving
        })
    );
    let bad_leaving = Envelope::new(
        "n1",
        1,
        Body::Leaving {
            node_id: String::new(),
        },
    );
    assert_eq!(
        decode(&encode(&bad_leaving)),
        Err(DecodeError::InvalidNodeId {
            kind: Kind::Leaving
        })
    );
    let bad_frame = Envelope::new(
        "n1",
        1,
        Body::Deliver(Delivery {
            targets: Targets::All,
            frame: Bytes::from_static(b"\xff\xfe"),
            exclude_client: None,
            extra: Extra::default(),
        }),
    );
    assert_eq!(decode(&encode(&bad_frame)), Err(DecodeError::FrameNotUtf8));
}

#[test]
fn forged_lengths_fail_without_allocating_them() {
    // Disconnect whose client_ids claims 2^32-1 elements, then ends.
    let mut wire = unhex("504d000104 94a26e3107cf00060a24181e4000 92 dd");
    wire.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&wire), Err(DecodeError::Malformed { .. })));
    // Deliver whose frame claims a 4 GiB bin.
    let mut wire = unhex("504d000101 94a26e3107cf00060a24181e4000 93 9104 c6");
    wire.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&wire), Err(DecodeError::Malformed { .. })));
    // Origin claims a 4 GiB string.
    let mut wire = unhex("504d000103 94 db");
    wire.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(decode(&wire), Err(DecodeError::Malformed { .. })));
}

#[test]
fn deep_nesting_is_refused_without_recursing() {
    // A heartbeat whose NodeInfo is a map with an unknown key whose value is
    // 100_000 nested arrays: the decoder would have to skip it recursively.
    let mut wire = unhex("504d000102 94 a26e31 07 00 81 a178");
    wire.extend(vec![0x91; 100_000]);
    wire.push(0xc0);
    match decode(&wire) {
        Err(DecodeError::Malformed { kind, reason }) => {
            assert_eq!(kind, Kind::Heartbeat);
            assert!(reason.contains("depth"), "{reason}");
        }
        other => panic!("expected a depth error, got {other:?}"),
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Change `input` (not empty) in one place: set a byte, flip a bit,
    /// insert a byte, or (if `truncate`) cut it short.
    fn mutate(&mut self, input: &mut Vec<u8>, truncate: bool) {
        match self.below(if truncate { 4 } else { 3 }) {
            0 => {
                let i = self.below(input.len());
                input[i] = self.next() as u8;
            }
            1 => {
                let i = self.below(input.len());
                input[i] ^= 1 << self.below(8);
            }
            2 => {
                let i = self.below(input.len() + 1);
                input.insert(i, self.next() as u8);
            }
            _ => {
                let cut = self.below(input.len() + 1);
                input.truncate(cut.max(1));
            }
        }
    }
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut input: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Give most inputs a valid header so the msgpack part gets exercised.
        if len >= HEADER_LEN && rng.below(4) != 0 {
            input[..4].copy_from_slice(&[b'P', b'M', 0, 1]);
            input[4] = 1 + rng.below(6) as u8;
        }
        if let Ok(env) = decode(&input) {
            decoded += 1;
            assert_eq!(decode(&encode(&env)), Ok(env));
        }
    }
    // Random bytes almost never form an envelope; the loop is about not panicking.
    assert!(decoded < 20_000);
}

#[test]
fn mutated_envelopes_never_panic_and_re_encode_stably() {
    let mut rng = XorShift(0x0123_4567_89ab_cdef);
    let seeds: Vec<Vec<u8>> = golden()
        .iter()
        .map(|(_, e, _)| encode(e).to_vec())
        .collect();
    let mut decoded = 0;
    for _ in 0..50_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(4) {
            rng.mutate(&mut input, true);
        }
        if let Ok(env) = decode(&input) {
            decoded += 1;
            let again = encode(&env);
            assert_eq!(decode(&again).as_ref(), Ok(&env));
            assert_eq!(encode(&env), again, "encoding is deterministic");
        }
    }
    // Some single-byte mutations (e.g. of seq or a string byte) stay valid.
    assert!(decoded > 0);
}

#[test]
fn a_batch_of_encoded_envelopes_decodes_to_them_in_order() {
    let parts: Vec<Envelope> = golden()
        .into_iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.body.kind() != Kind::Batch)
        .collect();
    let wire: Vec<Bytes> = parts.iter().map(encode).collect();
    let batch = encode_batch("n1", 9, &wire);
    let decoded = decode(&batch).expect("a batch decodes");
    assert_eq!((decoded.origin.as_str(), decoded.seq), ("n1", 9));
    assert_eq!(decoded.body, Body::Batch(parts.clone()));
    // The same bytes as encoding the decoded batch.
    assert_eq!(encode(&decoded), batch);
    assert!(
        batch.len()
            <= batch_overhead(2)
                + wire
                    .iter()
                    .map(|w| w.len() + BATCH_ITEM_OVERHEAD)
                    .sum::<usize>()
    );
    // An empty batch is valid and holds nothing.
    let empty = decode(&encode_batch("n1", 1, &[])).expect("empty batch");
    assert_eq!(empty.body, Body::Batch(vec![]));
}

#[test]
fn a_batch_inside_a_batch_or_of_another_origin_is_malformed() {
    let one = encode(&golden()[0].1);
    let inner = encode_batch("n1", 1, std::slice::from_ref(&one));
    assert!(matches!(
        decode(&encode_batch("n1", 2, &[one.clone(), inner])),
        Err(DecodeError::Malformed { kind: Kind::Batch, ref reason }) if reason.contains("inside")
    ));
    assert!(matches!(
        decode(&encode_batch("n2", 2, &[one])),
        Err(DecodeError::Malformed { kind: Kind::Batch, ref reason }) if reason.contains("origin")
    ));
    // A part that is not an envelope fails with that part's own error.
    assert_eq!(
        decode(&encode_batch(
            "n1",
            2,
            &[Bytes::from_static(b"XX\x00\x02\x01")]
        )),
        Err(DecodeError::BadMagic { got: *b"XX" })
    );
}

/// An empty extra part, a full one without a key, and one with a key.
fn sample_extras() -> [Extra; 3] {
    [
        Extra::default(),
        Extra {
            channel: Some("news".into()),
            event: Some("created".into()),
            kind: 2,
            origin_client: Some("n1-abc".into()),
            audience: Some(Bytes::from_static(b"\x00\xffaud")),
            idempotency: None,
        },
        Extra {
            channel: Some("news".into()),
            origin_client: Some("n1-abc".into()),
            idempotency: Some("u:alice:k1".into()),
            ..Extra::default()
        },
    ]
}

#[test]
fn encode_deliver_writes_the_bytes_of_encode() {
    let extras = sample_extras();
    let many = Targets::Clients(vec!["n2-a".into(), "n2-b".into()]);
    let targets = [
        (
            TargetsRef::One(Targets::TAG_CHANNELS, "news"),
            Targets::Channels(vec!["news".into()]),
        ),
        (
            TargetsRef::One(Targets::TAG_USERS, "alice"),
            Targets::Users(vec!["alice".into()]),
        ),
        (TargetsRef::Whole(&many), many.clone()),
        (TargetsRef::Whole(&Targets::All), Targets::All),
    ];
    let frame = br#"{"type":"channel","data":{"x":1}}"#;
    for extra in &extras {
        for (borrowed, owned) in &targets {
            let by_ref = ExtraRef::from(extra);
            let wire = encode_deliver("n1", 42, *borrowed, frame, &by_ref);
            let env = decode(&wire).expect("decodes");
            assert_eq!(env.origin, "n1");
            assert_eq!(env.seq, 42);
            assert_eq!(
                env.body,
                Body::Deliver(Delivery {
                    targets: owned.clone(),
                    frame: Bytes::from_static(frame),
                    exclude_client: None,
                    extra: extra.clone(),
                })
            );
            // Byte for byte what `encode` writes for the same envelope.
            assert_eq!(encode(&env), wire);
        }
    }
}

/// The interest kinds are new tags of version 2, not a new version: an
/// older node (which knows tags up to 8) refuses just them as unknown kinds
/// and keeps reading everything else, and never answers them, so its
/// peers never learn its interest and keep relaying everything.
#[test]
fn interest_kinds_are_new_tags_an_older_node_refuses_alone() {
    for (name, env, _) in golden() {
        let wire = encode(&env);
        let tag = wire[4];
        if (9..=12).contains(&tag) {
            assert_eq!(&wire[2..4], &2u16.to_be_bytes(), "{name}: still version 2");
            // What an older build sees: a tag it does not know.
            let mut unknown = wire.to_vec();
            unknown[4] = 13;
            assert_eq!(
                decode(&unknown),
                Err(DecodeError::UnknownKind { tag: 13 }),
                "{name}"
            );
        } else {
            assert!(tag <= 8, "{name}");
        }
    }
    let ack = Envelope::new(
        "n1",
        1,
        Body::InterestAck {
            acks: vec![("not a node id!".into(), 1)],
        },
    );
    assert_eq!(
        decode(&encode(&ack)),
        Err(DecodeError::InvalidNodeId {
            kind: Kind::InterestAck
        })
    );
}

/// `decode_ref` of `input` as an owned envelope: must equal `decode`'s
/// result, error for error.
fn decode_ref_owned(input: &[u8]) -> Result<Envelope, DecodeError> {
    decode_ref(input).map(Decoded::into_envelope)
}

/// Envelopes of every kind, every targets variant, versions 1 and 2, with
/// and without each optional part, and batches of them.
fn decode_ref_seeds() -> Vec<Bytes> {
    let mut seeds: Vec<Bytes> = golden().iter().map(|(_, e, _)| encode(e)).collect();
    let frame = br#"{"type":"channel","data":{"x":1}}"#;
    let many = Targets::Clients(vec!["n2-a".into(), "n2-b".into()]);
    let none = Targets::Channels(vec![]);
    for extra in &sample_extras() {
        for targets in [
            TargetsRef::One(Targets::TAG_CHANNELS, "news"),
            TargetsRef::One(Targets::TAG_USERS, "alice"),
            TargetsRef::Whole(&many),
            TargetsRef::Whole(&none),
            TargetsRef::Whole(&Targets::All),
        ] {
            seeds.push(encode_deliver(
                "n1",
                u64::MAX,
                targets,
                frame,
                &ExtraRef::from(extra),
            ));
        }
    }
    // A long name, frame and origin: the 16- and 32-bit length forms.
    let long = "c".repeat(70_000);
    seeds.push(encode_deliver(
        &"n".repeat(MAX_NODE_ID_LEN),
        1,
        TargetsRef::One(Targets::TAG_CHANNELS, &long),
        long.as_bytes(),
        &ExtraRef {
            channel: Some(&long),
            ..ExtraRef::default()
        },
    ));
    let delivers: Vec<Bytes> = seeds
        .iter()
        .filter(|s| peek_kind(s) == Ok(Kind::Deliver))
        .filter(|s| decode(s).is_ok_and(|e| e.origin == "n1"))
        .cloned()
        .collect();
    seeds.push(encode_batch("n1", 3, &delivers));
    let mixed: Vec<Bytes> = golden()
        .iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.body.kind() != Kind::Batch)
        .map(encode)
        .collect();
    seeds.push(encode_batch("n1", 4, &mixed));
    seeds.push(encode_batch("n1", 5, &[]));
    seeds
}

#[test]
fn decode_ref_means_what_decode_means() {
    for seed in decode_ref_seeds() {
        let owned = decode(&seed).expect("every seed decodes");
        let borrowed = decode_ref(&seed).expect("and decodes borrowed");
        match (&borrowed, &owned.body) {
            // The usual layouts take the borrowed path.
            (Decoded::Deliver(_), Body::Deliver(_)) | (Decoded::Batch { .. }, Body::Batch(_)) => {}
            (Decoded::Owned(_), body) => assert!(
                !matches!(body, Body::Deliver(_) | Body::Batch(_)),
                "a delivery or batch fell back: {owned:?}"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(borrowed.into_envelope(), owned);
        // And the same bytes again.
        assert_eq!(decode(&encode(&owned)), Ok(owned));
    }
}

#[test]
fn decode_ref_borrows_the_names_the_frame_and_the_extra_from_the_input() {
    let wire = encode_deliver(
        "n1",
        8,
        TargetsRef::One(Targets::TAG_CHANNELS, "news"),
        b"{\"a\":1}",
        &ExtraRef {
            channel: Some("news"),
            origin_client: Some("n1-abc"),
            idempotency: Some("k"),
            audience: Some(b"aud"),
            ..ExtraRef::default()
        },
    );
    let Ok(Decoded::Deliver(d)) = decode_ref(&wire) else {
        panic!("a delivery");
    };
    let inside = |s: &[u8]| {
        let range = wire.as_ptr_range();
        range.contains(&s.as_ptr()) && s.as_ptr_range().end <= range.end
    };
    let TargetsView::Channels(Names::One(name)) = d.targets else {
        panic!("one channel: {:?}", d.targets);
    };
    assert_eq!(
        (d.origin, d.seq, name, d.frame),
        ("n1", 8, "news", "{\"a\":1}")
    );
    let e = &d.extra;
    let (channel, origin) = (
        e.channel.expect("channel"),
        e.origin_client.expect("origin"),
    );
    for part in [
        d.origin.as_bytes(),
        name.as_bytes(),
        d.frame.as_bytes(),
        channel.as_bytes(),
        origin.as_bytes(),
        e.idempotency.expect("key").as_bytes(),
        e.audience.expect("audience"),
    ] {
        assert!(inside(part), "{part:?} is a copy");
    }
    // The view of the owned envelope is the same delivery.
    let owned = decode(&wire).expect("decodes");
    assert_eq!(DeliverRef::of(&owned), Some(d.clone()));
    assert_eq!(d.to_envelope(), owned);
    assert_eq!(DeliverRef::of(&encode_and_decode_heartbeat()), None);
}

fn encode_and_decode_heartbeat() -> Envelope {
    let (_, env, _) = golden()
        .into_iter()
        .find(|(_, e, _)| e.body.kind() == Kind::Heartbeat)
        .expect("a heartbeat");
    decode(&encode(&env)).expect("decodes")
}

#[test]
fn decode_ref_hands_unusual_layouts_to_decode() {
    // [origin, seq, sent_at, [targets, frame, exclude, extra]] with the
    // frame as a str, a channel as bin, a seq or kind as a signed int,
    // targets [4] with names: decode_ref leaves all of these to decode.
    let head = |seq: &[u8]| {
        let mut v = b"PM\x00\x02\x01\x94\xa2n1".to_vec();
        v.extend_from_slice(seq);
        v.push(0x01);
        v
    };
    let body = |targets: &[u8], frame: &[u8], extra: &[u8]| {
        let mut v = vec![0x94];
        v.extend_from_slice(targets);
        v.extend_from_slice(frame);
        v.push(0xc0);
        v.extend_from_slice(extra);
        v
    };
    let extra5 = b"\x95\xc0\xc0\x00\xc0\xc0".as_slice();
    let chan = b"\x92\x01\x91\xa1a".as_slice();
    let frame = b"\xc4\x02{}".as_slice();
    let cases: Vec<Vec<u8>> = vec![
        [head(b"\x07"), body(chan, b"\xa2{}", extra5)].concat(),
        [head(b"\x07"), body(b"\x92\x01\x91\xc4\x01a", frame, extra5)].concat(),
        [head(b"\xd0\x07"), body(chan, frame, extra5)].concat(),
        [
            head(b"\x07"),
            body(chan, frame, b"\x95\xc0\xc0\xd0\x01\xc0\xc0"),
        ]
        .concat(),
    ];
    for case in &cases {
        let owned = decode(case);
        assert!(owned.is_ok(), "{owned:?}");
        assert!(matches!(decode_ref(case), Ok(Decoded::Owned(_))));
        assert_eq!(decode_ref_owned(case), owned);
    }
    // Targets [4, []]: decode refuses it, and so does decode_ref, alike.
    let all_with_names = [head(b"\x07"), body(b"\x92\x04\x90", frame, extra5)].concat();
    assert!(decode(&all_with_names).is_err());
    assert_eq!(decode_ref_owned(&all_with_names), decode(&all_with_names));
    // The plain form of the same delivery takes the borrowed path, and so
    // does an extra of six whose key is nil (no key, as decode reads it).
    let plain = [head(b"\x07"), body(chan, frame, extra5)].concat();
    let nil_key = [
        head(b"\x07"),
        body(chan, frame, b"\x96\xc0\xc0\x00\xc0\xc0\xc0"),
    ]
    .concat();
    for case in [plain, nil_key] {
        assert!(matches!(decode_ref(&case), Ok(Decoded::Deliver(_))));
        assert_eq!(decode_ref_owned(&case), decode(&case));
    }
}

#[test]
fn decode_ref_accepts_and_refuses_what_decode_does() {
    let seeds: Vec<Vec<u8>> = decode_ref_seeds()
        .iter()
        .filter(|s| s.len() < 4096)
        .map(|s| s.to_vec())
        .collect();
    let mut rng = XorShift(0x5eed_0fde_c0de);
    let (mut ok, mut refused) = (0, 0);
    for seed in &seeds {
        // Every truncation and every trailing byte.
        for cut in 0..seed.len() {
            assert_eq!(decode_ref_owned(&seed[..cut]), decode(&seed[..cut]));
        }
        let mut longer = seed.clone();
        longer.push(0);
        assert_eq!(decode_ref_owned(&longer), decode(&longer));
    }
    for _ in 0..100_000 {
        let mut input = seeds[rng.below(seeds.len())].clone();
        for _ in 0..1 + rng.below(3) {
            rng.mutate(&mut input, false);
        }
        let owned = decode(&input);
        assert_eq!(decode_ref_owned(&input), owned, "input {}", hex(&input));
        if owned.is_ok() {
            ok += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        ok > 1000 && refused > 1000,
        "{ok} decoded, {refused} refused"
    );
}

#[test]
fn the_origin_of_every_kind_is_read_from_its_head() {
    for (name, envelope, _) in golden() {
        let bytes = encode(&envelope);
        assert_eq!(
            peek_origin(&bytes),
            Some(envelope.origin.as_str()),
            "{name}"
        );
    }
    let leaving = Envelope::new(
        "n1",
        8,
        Body::Leaving {
            node_id: "n1".into(),
        },
    );
    let batch = encode(&Envelope::new("n1", 9, Body::Batch(vec![leaving])));
    assert_eq!(peek_origin(&batch), Some("n1"));
    let bytes = encode(&golden()[0].1);
    assert_eq!(peek_origin(&bytes[..HEADER_LEN]), None, "no head");
    assert_eq!(peek_origin(b"xx"), None);
}
