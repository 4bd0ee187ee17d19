//! Property tests over the protocol wire modules (`frontend/*/wire.rs`):
//! no input makes a decoder panic, and whatever decodes re-encodes to
//! something that decodes to the same message. Inputs are built from the
//! tokens these formats are made of, so most cases get past the first
//! checks. Fixed seeds keep `cargo test` deterministic;
//! `PUBMESH_FUZZ_CASES` raises the number of cases.

#[path = "support/runner.rs"]
mod support;
use proptest::prelude::*;
use pubmesh_node::frontend::cells::wire as cells;
use pubmesh_node::frontend::chain::wire as chain;
use pubmesh_node::frontend::phoenix::wire as phx;
use pubmesh_node::frontend::socketio::{engineio as eio, wire as sio};
use support::runner;

const TOKENS: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "\"",
    ",",
    ":",
    "0",
    "1",
    "2",
    "3",
    "4",
    "5",
    "6",
    "9",
    "-",
    "42",
    "-1",
    "1.5",
    "1e3",
    "null",
    "true",
    "\"1\"",
    "\"room:1\"",
    "\"phx_join\"",
    "\"phx_leave\"",
    "\"heartbeat\"",
    "\"phoenix\"",
    "\"_join\"",
    "\"_leave\"",
    "\"a,b\"",
    "\"*\"",
    "{}",
    "[]",
    "/",
    "/admin",
    "?x=1",
    "\u{1e}",
    "b",
    "b4",
    "AQID",
    "==",
    "\"_placeholder\":true",
    "\"num\":0",
    "\"@type\"",
    "\"subscribe\"",
    "\"jwt\"",
    "\"JOIN\"",
    "\"HISTORY\"",
    "\"POST\"",
    "\"Room\"",
    "\"Message\"",
    "\"Timestamp\"",
    "\"Offset\"",
    "\"Limit\"",
    "\"Type\"",
    "\"Target\"",
    "\"MetaStore\"",
    "\"Size\"",
    "\"CREATE\"",
    "\"UPDATE_META\"",
    " ",
    "\n",
    "\\",
    "é",
    "😀",
    "\u{0}",
    "data: ",
    "\r\n",
];

/// Text made of format tokens.
fn tokens() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(TOKENS), 0..28).prop_map(|v| v.concat()),
        ".{0,40}",
    ]
}

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..48),
        // Mostly small values: plausible Phoenix and Engine.IO headers.
        prop::collection::vec(0u8..12, 0..24),
        tokens().prop_map(String::into_bytes),
    ]
}

#[test]
fn phoenix_decoders_never_panic_and_round_trip() {
    runner(3000, 11)
        .run(&(tokens(), bytes()), |(text, frame)| {
            for vsn in [phx::Vsn::V1, phx::Vsn::V2] {
                let _ = phx::Inbound::decode_text(vsn, &text);
                if let Ok(m) = phx::Message::decode_text(vsn, &text) {
                    let again = m.encode_text(phx::Vsn::V2).expect("JSON payload");
                    let back = phx::Message::decode_text(phx::Vsn::V2, &again).expect("re-decodes");
                    prop_assert_eq!(back, m);
                }
            }
            let _ = phx::Inbound::decode_binary(phx::Vsn::V2, &frame);
            if let Ok(m) = phx::Message::decode_binary(phx::Vsn::V2, &frame) {
                let phx::Payload::Binary(data) = &m.payload else {
                    panic!("binary frames carry bytes");
                };
                let again = phx::encode_binary_client_push(
                    m.join_ref.as_ref(),
                    m.reference.as_ref(),
                    &m.topic,
                    &m.event,
                    data,
                )
                .expect("fields fit");
                prop_assert_eq!(again, frame);
            }
            Ok(())
        })
        .expect("phoenix properties hold");
}

#[test]
fn chain_decoders_never_panic_and_round_trip() {
    runner(3000, 12)
        .run(
            &(tokens(), prop::collection::vec(tokens(), 0..4)),
            |(text, chunks)| {
                let _ = chain::Inbound::decode(&text);
                if let Ok(m) = chain::Message::decode(&text) {
                    prop_assert_eq!(chain::Message::decode(&m.encode()), Ok(m));
                }
                let mut sse = chain::SseDecoder::new();
                for chunk in &chunks {
                    for event in sse.feed(chunk.as_bytes()) {
                        let _ = chain::Message::decode(&event);
                    }
                }
                Ok(())
            },
        )
        .expect("chain properties hold");
}

#[test]
fn engineio_decoders_never_panic_and_payloads_round_trip() {
    runner(3000, 13)
        .run(&(tokens(), bytes()), |(text, frame)| {
            let _ = eio::Packet::decode_text(&text);
            for v in [eio::Eio::V3, eio::Eio::V4] {
                let _ = eio::Packet::decode_binary(v, &frame);
            }
            if let Ok(ps) = eio::decode_payload_v4(&text) {
                prop_assert_eq!(eio::decode_payload_v4(&eio::encode_payload_v4(&ps)), Ok(ps));
            }
            if let Ok(ps) = eio::decode_payload_v3(&text) {
                prop_assert_eq!(eio::decode_payload_v3(&eio::encode_payload_v3(&ps)), Ok(ps));
            }
            if let Ok(ps) = eio::decode_payload_v3_binary(&frame) {
                prop_assert_eq!(
                    eio::decode_payload_v3_binary(&eio::encode_payload_v3_binary(&ps)),
                    Ok(ps)
                );
            }
            let query: Vec<(String, String)> = text
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let _ = eio::Request::classify(
                &text,
                query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                true,
            );
            Ok(())
        })
        .expect("engine.io properties hold");
}

#[test]
fn socketio_decoder_never_panics_and_round_trips() {
    runner(4000, 14)
        .run(&tokens(), |text| {
            if let Ok(p) = sio::Packet::decode(&text) {
                prop_assert_eq!(sio::Packet::decode(&p.encode()), Ok(p.clone()));
                let _ = sio::Reassembly::start(p);
            }
            Ok(())
        })
        .expect("socket.io properties hold");
}

#[test]
fn cells_decoders_never_panic_and_chat_messages_round_trip() {
    runner(3000, 15)
        .run(&(tokens(), tokens()), |(a, b)| {
            let _ = cells::Control::decode(&a);
            let _ = cells::ChatRequest::decode(&a);
            if let Ok(m) = serde_json::from_str::<cells::WebSocketMessage>(&a) {
                let again = serde_json::to_string(&m).expect("serializes");
                let back: cells::WebSocketMessage =
                    serde_json::from_str(&again).expect("re-decodes");
                prop_assert_eq!(back, m);
            }
            let events: Vec<cells::NodeChangeEvent> = [a.as_str(), b.as_str()]
                .iter()
                .filter_map(|t| serde_json::from_str(t).ok())
                .collect();
            if let Some(merged) = cells::merge(&events) {
                prop_assert!(serde_json::to_string(&merged.event).is_ok());
            }
            Ok(())
        })
        .expect("cells properties hold");
}
