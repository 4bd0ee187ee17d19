use super::*;

fn q<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
    pairs.iter().copied()
}

#[test]
fn requests_are_classified_as_the_reference_server_does() {
    assert_eq!(
        Request::classify("GET", q(&[("EIO", "4"), ("transport", "polling")]), true),
        Ok(Request::Handshake {
            eio: Eio::V4,
            transport: Transport::Polling
        })
    );
    assert_eq!(
        Request::classify(
            "POST",
            q(&[("EIO", "3"), ("transport", "polling"), ("sid", "abc")]),
            true
        ),
        Ok(Request::Session {
            eio: Eio::V3,
            transport: Transport::Polling,
            sid: "abc".into()
        })
    );
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], ServerError);
    let cases: &[Case<'_>] = &[
        (
            "GET",
            &[("EIO", "4"), ("transport", "flash")],
            ServerError::UnknownTransport,
        ),
        ("GET", &[("EIO", "4")], ServerError::UnknownTransport),
        (
            "GET",
            &[("EIO", "5"), ("transport", "polling")],
            ServerError::UnsupportedProtocolVersion,
        ),
        (
            "GET",
            &[("transport", "websocket")],
            ServerError::UnsupportedProtocolVersion,
        ),
        (
            "POST",
            &[("EIO", "4"), ("transport", "polling")],
            ServerError::BadHandshakeMethod,
        ),
        (
            "GET",
            &[("EIO", "4"), ("transport", "polling"), ("sid", "")],
            ServerError::UnknownSid,
        ),
        (
            "GET",
            &[("EIO", "3"), ("transport", "polling"), ("j", "0")],
            ServerError::BadRequest,
        ),
    ];
    for (method, query, want) in cases {
        assert_eq!(
            Request::classify(method, q(query), true),
            Err(*want),
            "{method} {query:?}"
        );
    }
    // EIO=3 can be turned off.
    assert_eq!(
        Request::classify("GET", q(&[("EIO", "3"), ("transport", "polling")]), false),
        Err(ServerError::UnsupportedProtocolVersion)
    );
}

#[test]
fn error_bodies_carry_code_and_message() {
    let all = [
        (
            ServerError::UnknownTransport,
            r#"{"code":0,"message":"Transport unknown"}"#,
            400,
        ),
        (
            ServerError::UnknownSid,
            r#"{"code":1,"message":"Session ID unknown"}"#,
            400,
        ),
        (
            ServerError::BadHandshakeMethod,
            r#"{"code":2,"message":"Bad handshake method"}"#,
            400,
        ),
        (
            ServerError::BadRequest,
            r#"{"code":3,"message":"Bad request"}"#,
            400,
        ),
        (
            ServerError::Forbidden,
            r#"{"code":4,"message":"Forbidden"}"#,
            403,
        ),
        (
            ServerError::UnsupportedProtocolVersion,
            r#"{"code":5,"message":"Unsupported protocol version"}"#,
            400,
        ),
    ];
    for (e, body, status) in all {
        assert_eq!(e.body(), body);
        assert_eq!(e.http_status(), status);
    }
}

#[test]
fn handshake_announces_max_payload_in_v4_only() {
    let h = Handshake {
        sid: "lv_VI97HAXpY6yYWAAAC".into(),
        upgrades: vec!["websocket".into()],
        ping_interval: 25000,
        ping_timeout: 20000,
        max_payload: Some(1_000_000),
    };
    assert_eq!(
        h.packet(Eio::V4).encode_text().as_deref(),
        Some(
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        )
    );
    assert_eq!(
        h.packet(Eio::V3).encode_text().as_deref(),
        Some(
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000}"#
        )
    );
    let back: Handshake =
        serde_json::from_str(&h.packet(Eio::V4).encode_text().expect("text")[1..]).expect("json");
    assert_eq!(back, h);
}

#[test]
fn every_packet_type_round_trips_over_websocket() {
    let packets = [
        Packet::bare(PacketType::Close),
        Packet::bare(PacketType::Ping),
        Packet::text(PacketType::Ping, "probe"),
        Packet::text(PacketType::Pong, "probe"),
        Packet::bare(PacketType::Pong),
        Packet::message(r#"2["hello","wörld"]"#),
        Packet::bare(PacketType::Upgrade),
        Packet::bare(PacketType::Noop),
    ];
    for eio in [Eio::V3, Eio::V4] {
        for p in &packets {
            let WsFrame::Text(t) = p.encode_ws(eio) else {
                panic!("text packets are text frames");
            };
            assert_eq!(&Packet::decode_text(&t).expect("decode"), p);
        }
        let bin = Packet::binary(vec![1u8, 2, 3]);
        let WsFrame::Binary(b) = bin.encode_ws(eio) else {
            panic!("bytes are binary frames");
        };
        assert_eq!(Packet::decode_binary(eio, &b).expect("decode"), bin);
    }
    assert_eq!(Packet::message("x").encode_text().as_deref(), Some("4x"));
    assert_eq!(
        Packet::binary(vec![1u8]).encode_ws(Eio::V3),
        WsFrame::Binary(Bytes::from_static(&[4, 1]))
    );
    assert_eq!(Packet::decode_text(""), Err(DecodeError::Empty));
    assert_eq!(Packet::decode_text("7"), Err(DecodeError::UnknownType('7')));
    assert_eq!(Packet::decode_text("é"), Err(DecodeError::UnknownType('é')));
    assert_eq!(
        Packet::decode_binary(Eio::V3, &[2, 1]),
        Err(DecodeError::BinaryNotMessage)
    );
}

#[test]
fn v4_payloads_use_the_record_separator() {
    let packets = vec![
        Packet::message("hello"),
        Packet::binary(vec![1u8, 2, 3, 4]),
        Packet::bare(PacketType::Ping),
    ];
    let body = encode_payload_v4(&packets);
    assert_eq!(body, "4hello\x1ebAQIDBA==\x1e2");
    assert_eq!(decode_payload_v4(&body), Ok(packets));
    assert_eq!(decode_payload_v4("4a\x1e"), Err(DecodeError::Empty));
    assert_eq!(decode_payload_v4("b!!"), Err(DecodeError::Base64));
}

#[test]
fn v3_payloads_count_utf16_units() {
    let packets = vec![
        Packet::message("héllo €😀"),
        Packet::binary(vec![1u8, 2, 3, 4]),
        Packet::bare(PacketType::Pong),
    ];
    let body = encode_payload_v3(&packets);
    // "4héllo €😀": 1 + 5 + 1 + 1 + 2 (a surrogate pair) = 10 units.
    assert_eq!(body, "10:4héllo €😀10:b4AQIDBA==1:3");
    assert_eq!(decode_payload_v3(&body), Ok(packets));
    assert_eq!(decode_payload_v3("3:4a"), Err(DecodeError::Truncated));
    assert_eq!(decode_payload_v3("x:4a"), Err(DecodeError::BadLength));
    assert_eq!(decode_payload_v3(":4a"), Err(DecodeError::BadLength));
    assert_eq!(decode_payload_v3("4a"), Err(DecodeError::BadLength));
    assert_eq!(
        decode_payload_v3("2:b4"),
        Ok(vec![Packet::binary(Vec::<u8>::new())])
    );
    assert_eq!(decode_payload_v3("5:b4AQ"), Err(DecodeError::Truncated));
    assert_eq!(
        decode_payload_v3("3:b2A"),
        Err(DecodeError::BinaryNotMessage)
    );
    assert_eq!(decode_payload_v3("1:9"), Err(DecodeError::UnknownType('9')));
}

#[test]
fn v3_binary_payloads_round_trip() {
    let packets = vec![Packet::message("hi"), Packet::binary(vec![0xffu8; 11])];
    let body = encode_payload_v3_binary(&packets);
    let mut want = vec![0u8, 3, 0xff, b'4', b'h', b'i', 1, 1, 2, 0xff, 4];
    want.extend_from_slice(&[0xff; 11]);
    assert_eq!(body, want);
    assert_eq!(decode_payload_v3_binary(&body), Ok(packets));
    assert_eq!(
        decode_payload_v3_binary(&[0, 5, 0xff, b'4']),
        Err(DecodeError::Truncated)
    );
    assert_eq!(
        decode_payload_v3_binary(&[2, 1, 0xff, b'4']),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        decode_payload_v3_binary(&[0, 1, 0xff, 0xc3]),
        Err(DecodeError::NotUtf8)
    );
}
