use super::*;

fn j(s: &str) -> Json {
    Json::from_text(s).expect("json")
}

#[test]
fn connect_packets_in_both_versions() {
    assert_eq!(
        Packet::decode("0"),
        Ok(Packet::Connect {
            nsp: "/".into(),
            query: None,
            data: None
        })
    );
    assert_eq!(
        Packet::decode(r#"0/admin,{"token":"123"}"#),
        Ok(Packet::Connect {
            nsp: "/admin".into(),
            query: None,
            data: Some(j(r#"{"token":"123"}"#))
        })
    );
    // socket.io-client 2 puts the query after the namespace.
    assert_eq!(
        Packet::decode("0/admin?token=abc&x=1,"),
        Ok(Packet::Connect {
            nsp: "/admin".into(),
            query: Some("token=abc&x=1".into()),
            data: None
        })
    );
    assert_eq!(
        Packet::connected(Version::V5, "/", "oSO0OpakMV_3jnilAAAA").encode(),
        r#"0{"sid":"oSO0OpakMV_3jnilAAAA"}"#
    );
    assert_eq!(
        Packet::connected(Version::V5, "/admin", "x").encode(),
        r#"0/admin,{"sid":"x"}"#
    );
    assert_eq!(Packet::connected(Version::V4, "/", "x").encode(), "0");
    assert_eq!(
        Packet::connected(Version::V4, "/admin", "x").encode(),
        "0/admin,"
    );
    assert_eq!(
        Packet::connect_error(Version::V5, "/nope", "Invalid namespace").encode(),
        r#"4/nope,{"message":"Invalid namespace"}"#
    );
    assert_eq!(
        Packet::connect_error(Version::V4, "/nope", "Invalid namespace").encode(),
        r#"4/nope,"Invalid namespace""#
    );
    assert_eq!(Packet::Disconnect { nsp: "/".into() }.encode(), "1");
    assert_eq!(
        Packet::decode("1/admin,"),
        Ok(Packet::Disconnect {
            nsp: "/admin".into()
        })
    );
}

#[test]
fn events_and_acks_with_namespaces_and_ids() {
    assert_eq!(
        Packet::decode(r#"2["hello",1,{"a":[true]}]"#),
        Ok(Packet::Event {
            nsp: "/".into(),
            id: None,
            event: "hello".into(),
            args: vec![j("1"), j(r#"{"a":[true]}"#)],
            attachments: None
        })
    );
    let with_ack =
        Packet::decode(r#"2/admin,456["/subscription",{"op":"subscribe","type":"allJobs"}]"#)
            .expect("decode");
    assert_eq!(
        with_ack,
        Packet::Event {
            nsp: "/admin".into(),
            id: Some(456),
            event: "/subscription".into(),
            args: vec![j(r#"{"op":"subscribe","type":"allJobs"}"#)],
            attachments: None
        }
    );
    assert_eq!(
        with_ack.encode(),
        r#"2/admin,456["/subscription",{"op":"subscribe","type":"allJobs"}]"#
    );
    let ack = Packet::Ack {
        nsp: "/".into(),
        id: 12,
        args: vec![j(r#""ok""#)],
        attachments: None,
    };
    assert_eq!(ack.encode(), r#"312["ok"]"#);
    assert_eq!(Packet::decode(r#"312["ok"]"#), Ok(ack));
    // Numeric event names are accepted and read as text.
    assert!(matches!(
        Packet::decode("2[42]"),
        Ok(Packet::Event { event, .. }) if event == "42"
    ));
    // What a server emits to a room (Flamenco's job updates).
    assert_eq!(
        Packet::event("/", "/jobs", vec![j(r#"{"id":"j1","status":"active"}"#)]).encode(),
        r#"2["/jobs",{"id":"j1","status":"active"}]"#
    );
}

#[test]
fn malformed_packets_are_refused_as_the_reference_parser_does() {
    let cases: &[(&str, DecodeError)] = &[
        ("", DecodeError::Empty),
        ("7", DecodeError::UnknownType),
        ("a", DecodeError::UnknownType),
        ("2", DecodeError::InvalidPayload),
        ("2{}", DecodeError::InvalidPayload),
        ("2[]", DecodeError::InvalidPayload),
        (r#"2[{"a":1}]"#, DecodeError::InvalidPayload),
        ("2[", DecodeError::InvalidPayload),
        (
            r#"2["connect"]"#,
            DecodeError::ReservedEvent("connect".into()),
        ),
        (
            r#"2["disconnecting",1]"#,
            DecodeError::ReservedEvent("disconnecting".into()),
        ),
        ("3[]", DecodeError::MissingAckId),
        ("31{}", DecodeError::InvalidPayload),
        ("0[]", DecodeError::InvalidPayload),
        (r#"0"x""#, DecodeError::InvalidPayload),
        ("1{}", DecodeError::InvalidPayload),
        ("4", DecodeError::InvalidPayload),
        ("4[]", DecodeError::InvalidPayload),
        (r#"5["a"]"#, DecodeError::IllegalAttachments),
        (r#"5x-["a"]"#, DecodeError::IllegalAttachments),
        (r#"5-["a"]"#, DecodeError::IllegalAttachments),
        ("299999999999999999999999[\"a\"]", DecodeError::BadId),
    ];
    for (text, want) in cases {
        assert_eq!(Packet::decode(text).as_ref(), Err(want), "{text}");
    }
}

#[test]
fn binary_events_reassemble_their_attachments() {
    let text = r#"52-/admin,7["upload",{"_placeholder":true,"num":0},{"meta":{"_placeholder":true,"num":1}}]"#;
    let packet = Packet::decode(text).expect("decode");
    assert_eq!(packet.attachments(), 2);
    assert_eq!(packet.encode(), text);
    let Ok(Start::Pending(mut pending)) = Reassembly::start(packet.clone()) else {
        panic!("waits for two attachments");
    };
    assert_eq!(pending.missing(), 2);
    assert!(!pending.push(Bytes::from_static(b"one")));
    assert_eq!(pending.missing(), 1);
    assert!(pending.push(Bytes::from_static(b"two")));
    let done = pending.finish().expect("complete");
    assert_eq!(done.packet, packet);
    assert_eq!(
        done.attachments,
        vec![Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    let Packet::Event { args, .. } = &done.packet else {
        panic!("an event");
    };
    assert_eq!(placeholders(args[1].get()), Ok(vec![1]));

    // A placeholder beyond the attachment count is refused up front.
    let bad = Packet::decode(r#"51-["x",{"_placeholder":true,"num":1}]"#).expect("decode");
    assert_eq!(
        Reassembly::start(bad).err(),
        Some(DecodeError::BadPlaceholder(1))
    );
    // No attachments: nothing to wait for.
    let plain = Packet::decode(r#"2["x"]"#).expect("decode");
    assert!(matches!(Reassembly::start(plain), Ok(Start::Complete(_))));
    // A binary ack.
    let back = Packet::Ack {
        nsp: "/".into(),
        id: 3,
        args: vec![placeholder(0)],
        attachments: Some(1),
    };
    assert_eq!(back.encode(), r#"61-3[{"_placeholder":true,"num":0}]"#);
    assert_eq!(Packet::decode(&back.encode()), Ok(back));
}

#[test]
fn every_variant_round_trips() {
    let packets = [
        Packet::Connect {
            nsp: "/".into(),
            query: None,
            data: Some(j(r#"{"token":"t"}"#)),
        },
        Packet::Connect {
            nsp: "/a".into(),
            query: Some("x=1".into()),
            data: None,
        },
        Packet::Disconnect { nsp: "/a".into() },
        Packet::Event {
            nsp: "/a".into(),
            id: Some(0),
            event: "é\"".into(),
            args: vec![],
            attachments: None,
        },
        Packet::Event {
            nsp: "/".into(),
            id: None,
            event: "bin".into(),
            args: vec![placeholder(0)],
            attachments: Some(1),
        },
        Packet::Ack {
            nsp: "/".into(),
            id: 99,
            args: vec![],
            attachments: None,
        },
        Packet::connect_error(Version::V5, "/", "Not authorized"),
        Packet::connect_error(Version::V4, "/", "Not authorized"),
    ];
    for p in packets {
        let text = p.encode();
        assert_eq!(Packet::decode(&text), Ok(p), "{text}");
    }
}
