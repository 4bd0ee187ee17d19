use super::*;

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_string()).expect("json")
}

fn s(r: &str) -> Option<Ref> {
    Some(Ref::Str(r.to_string()))
}

#[test]
fn vsn_follows_phoenix_version_requirements() {
    assert_eq!(Vsn::from_param(None), Ok(Vsn::V1));
    assert_eq!(Vsn::from_param(Some("1.0.0")), Ok(Vsn::V1));
    assert_eq!(Vsn::from_param(Some("2.0.0")), Ok(Vsn::V2));
    assert_eq!(Vsn::from_param(Some("2.0.7")), Ok(Vsn::V2));
    for bad in [
        "2.1.0", "3.0.0", "2.0", "2", "", "2.0.x", "2.0.0.0", "v2.0.0",
    ] {
        assert_eq!(
            Vsn::from_param(Some(bad)),
            Err(DecodeError::UnsupportedVsn(bad.to_string())),
            "{bad}"
        );
    }
}

#[test]
fn v2_join_as_the_official_client_sends_it() {
    let got = Inbound::decode_text(
        Vsn::V2,
        r#"["3","3","room:lobby","phx_join",{"token":"abc"}]"#,
    )
    .expect("decode");
    assert_eq!(
        got,
        Inbound::Join {
            join_ref: s("3"),
            reference: s("3"),
            topic: "room:lobby".into(),
            params: Params(raw(r#"{"token":"abc"}"#)),
        }
    );
}

#[test]
fn v2_heartbeat_leave_and_push() {
    assert_eq!(
        Inbound::decode_text(Vsn::V2, r#"[null,"7","phoenix","heartbeat",{}]"#),
        Ok(Inbound::Heartbeat { reference: s("7") })
    );
    assert_eq!(
        Inbound::decode_text(Vsn::V2, r#"["3","8","room:1","phx_leave",{}]"#),
        Ok(Inbound::Leave {
            join_ref: s("3"),
            reference: s("8"),
            topic: "room:1".into()
        })
    );
    // Integer refs (other client ports) are kept as integers.
    assert_eq!(
        Inbound::decode_text(Vsn::V2, r#"[3,9,"room:1","new_msg",{"body":"hi"}]"#),
        Ok(Inbound::Push {
            join_ref: Some(Ref::Int(3)),
            reference: Some(Ref::Int(9)),
            topic: "room:1".into(),
            event: "new_msg".into(),
            payload: Payload::Json(raw(r#"{"body":"hi"}"#)),
        })
    );
    // A heartbeat event on another topic is an ordinary push.
    assert!(matches!(
        Inbound::decode_text(Vsn::V2, r#"["1","2","room:1","heartbeat",{}]"#),
        Ok(Inbound::Push { .. })
    ));
}

#[test]
fn v2_payload_bytes_pass_through_unchanged() {
    let frame = r#"["1","2","room:1","msg",{"z":1,"a":[1.50,"\u00e9"]}]"#;
    let m = Message::decode_text(Vsn::V2, frame).expect("decode");
    assert_eq!(
        m.payload,
        Payload::Json(raw(r#"{"z":1,"a":[1.50,"\u00e9"]}"#))
    );
    assert_eq!(m.encode_text(Vsn::V2).as_deref(), Some(frame));
}

#[test]
fn v2_rejects_malformed_frames_with_typed_errors() {
    let cases: &[(&str, DecodeError)] = &[
        (r#"{"topic":"a"}"#, DecodeError::NotArray),
        ("42", DecodeError::NotArray),
        (r#"["1","2","room:1","ev"]"#, DecodeError::Arity(4)),
        (r#"["1","2","room:1","ev",{},{}]"#, DecodeError::Arity(6)),
        ("[]", DecodeError::Arity(0)),
        (
            r#"[true,"2","room:1","ev",{}]"#,
            DecodeError::BadRef("join_ref"),
        ),
        (r#"["1",{},"room:1","ev",{}]"#, DecodeError::BadRef("ref")),
        (r#"["1",1.5,"room:1","ev",{}]"#, DecodeError::BadRef("ref")),
        (r#"["1","2",7,"ev",{}]"#, DecodeError::TopicNotString),
        (r#"["1","2",null,"ev",{}]"#, DecodeError::TopicNotString),
        (
            r#"["1","2","room:1",["ev"],{}]"#,
            DecodeError::EventNotString,
        ),
        (r#"["1","2","room:1","",{}]"#, DecodeError::EmptyEvent),
        (r#"["1","2","","ev",{}]"#, DecodeError::EmptyTopic),
        (r#"["1","2","room:1","a,b",{}]"#, DecodeError::CommaInEvent),
        (
            r#"["1","2","room:1","phx_reply",{}]"#,
            DecodeError::ReservedEvent("phx_reply".into()),
        ),
        (
            r#"["1","2","room:1","phx_close",{}]"#,
            DecodeError::ReservedEvent("phx_close".into()),
        ),
        (
            r#"["1","2","room:1","phx_join","x"]"#,
            DecodeError::JoinParamsNotObject,
        ),
        (
            r#"["1","2","room:1","phx_join",null]"#,
            DecodeError::JoinParamsNotObject,
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(
            Inbound::decode_text(Vsn::V2, frame).as_ref(),
            Err(want),
            "{frame}"
        );
    }
    assert!(matches!(
        Inbound::decode_text(Vsn::V2, r#"["1","2""#),
        Err(DecodeError::Json(_))
    ));
    assert!(matches!(
        Inbound::decode_text(Vsn::V2, ""),
        Err(DecodeError::Json(_))
    ));
}

#[test]
fn v1_objects_decode_and_require_phoenix_fields() {
    assert_eq!(
        Inbound::decode_text(
            Vsn::V1,
            r#"{"topic":"room:1","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}"#
        ),
        Ok(Inbound::Join {
            join_ref: s("1"),
            reference: s("1"),
            topic: "room:1".into(),
            params: Params(raw("{}")),
        })
    );
    // join_ref is optional; ref may be null but must be there.
    assert_eq!(
        Inbound::decode_text(
            Vsn::V1,
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null}"#
        ),
        Ok(Inbound::Heartbeat { reference: None })
    );
    let cases: &[(&str, DecodeError)] = &[
        (r#"["1","2","t","e",{}]"#, DecodeError::NotObject),
        (
            r#"{"event":"e","payload":{},"ref":"1"}"#,
            DecodeError::MissingField("topic"),
        ),
        (
            r#"{"topic":"t","payload":{},"ref":"1"}"#,
            DecodeError::MissingField("event"),
        ),
        (
            r#"{"topic":"t","event":"e","ref":"1"}"#,
            DecodeError::MissingField("payload"),
        ),
        (
            r#"{"topic":"t","event":"e","payload":{}}"#,
            DecodeError::MissingField("ref"),
        ),
        (
            r#"{"topic":"t","event":"e","payload":{},"ref":false}"#,
            DecodeError::BadRef("ref"),
        ),
        (
            r#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#,
            DecodeError::TopicNotString,
        ),
        (
            r#"{"topic":"t","event":"a,b","payload":{},"ref":"1"}"#,
            DecodeError::CommaInEvent,
        ),
    ];
    for (frame, want) in cases {
        assert_eq!(
            Inbound::decode_text(Vsn::V1, frame).as_ref(),
            Err(want),
            "{frame}"
        );
    }
}

#[test]
fn replies_errors_closes_and_broadcasts_encode_as_phoenix_does() {
    let j = s("3");
    let r = s("4");
    assert_eq!(
        encode_reply(
            Vsn::V2,
            j.as_ref(),
            r.as_ref(),
            "room:1",
            Status::Ok,
            &raw("{}")
        ),
        r#"["3","4","room:1","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        encode_reply(
            Vsn::V2,
            j.as_ref(),
            r.as_ref(),
            "room:1",
            Status::Error,
            &reason("unmatched topic")
        ),
        r#"["3","4","room:1","phx_reply",{"status":"error","response":{"reason":"unmatched topic"}}]"#
    );
    assert_eq!(
        encode_reply(
            Vsn::V2,
            None,
            s("9").as_ref(),
            "phoenix",
            Status::Ok,
            &raw("{}")
        ),
        r#"[null,"9","phoenix","phx_reply",{"status":"ok","response":{}}]"#
    );
    assert_eq!(
        encode_error(Vsn::V2, j.as_ref(), "room:1"),
        r#"["3","3","room:1","phx_error",{}]"#
    );
    assert_eq!(
        encode_close(Vsn::V2, j.as_ref(), "room:1"),
        r#"["3","3","room:1","phx_close",{}]"#
    );
    assert_eq!(
        encode_broadcast(Vsn::V2, "room:1", "new_msg", &raw(r#"{"body":"hi"}"#)),
        r#"[null,null,"room:1","new_msg",{"body":"hi"}]"#
    );
    assert_eq!(
        encode_push(Vsn::V2, j.as_ref(), "room:1", "presence_state", &raw("{}")),
        r#"["3",null,"room:1","presence_state",{}]"#
    );
    // Integer refs are echoed as integers; strings are escaped.
    assert_eq!(
        encode_reply(
            Vsn::V2,
            Some(&Ref::Int(1)),
            Some(&Ref::Int(2)),
            "a\"b",
            Status::Ok,
            &raw("null")
        ),
        r#"[1,2,"a\"b","phx_reply",{"status":"ok","response":null}]"#
    );
}

#[test]
fn v1_encodes_topic_event_payload_ref() {
    assert_eq!(
        encode_reply(
            Vsn::V1,
            s("1").as_ref(),
            s("2").as_ref(),
            "t",
            Status::Ok,
            &raw("{}")
        ),
        r#"{"topic":"t","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"2"}"#
    );
    assert_eq!(
        encode_broadcast(Vsn::V1, "t", "e", &raw("[1]")),
        r#"{"topic":"t","event":"e","payload":[1],"ref":null}"#
    );
    // What v1 encodes, v1 decodes.
    let text = encode_push(Vsn::V1, None, "t", "e", &raw(r#"{"a":1}"#));
    let m = Message::decode_text(Vsn::V1, &text).expect("decode");
    assert_eq!((m.topic.as_str(), m.event.as_str()), ("t", "e"));
    assert_eq!(m.payload, Payload::Json(raw(r#"{"a":1}"#)));
}

#[test]
fn every_text_message_round_trips_in_both_serializers() {
    let messages = [
        Message {
            join_ref: s("1"),
            reference: s("2"),
            topic: "room:ü".into(),
            event: "msg".into(),
            payload: Payload::Json(raw(r#"{"x":[1,2,{"y":null}]}"#)),
        },
        Message {
            join_ref: None,
            reference: None,
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(raw("\"text\"")),
        },
        Message {
            join_ref: Some(Ref::Int(-5)),
            reference: Some(Ref::Int(6)),
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(raw("[]")),
        },
    ];
    for m in &messages {
        let v2 = m.encode_text(Vsn::V2).expect("json");
        assert_eq!(&Message::decode_text(Vsn::V2, &v2).expect("v2"), m);
        // v1 does not carry join_ref when encoding.
        let v1 = m.encode_text(Vsn::V1).expect("json");
        let back = Message::decode_text(Vsn::V1, &v1).expect("v1");
        assert_eq!(back.join_ref, None);
        assert_eq!(
            (&back.reference, &back.topic, &back.event, &back.payload),
            (&m.reference, &m.topic, &m.event, &m.payload)
        );
    }
}

#[test]
fn binary_frames_match_the_client_layout() {
    // A client push with an ArrayBuffer payload.
    let frame = encode_binary_client_push(
        s("12").as_ref(),
        s("13").as_ref(),
        "room:1",
        "up",
        &[1, 2, 3],
    )
    .expect("encode");
    let mut want = vec![0u8, 2, 2, 6, 2];
    want.extend_from_slice(b"1213room:1up");
    want.extend_from_slice(&[1, 2, 3]);
    assert_eq!(frame, want);
    assert_eq!(
        Inbound::decode_binary(Vsn::V2, &frame),
        Ok(Inbound::Push {
            join_ref: s("12"),
            reference: s("13"),
            topic: "room:1".into(),
            event: "up".into(),
            payload: Payload::Binary(Bytes::from_static(&[1, 2, 3])),
        })
    );
    // Server frames.
    let mut push = vec![0u8, 1, 1, 2];
    push.extend_from_slice(b"3tev\xff");
    assert_eq!(
        encode_binary_push(s("3").as_ref(), "t", "ev", &[0xff]).expect("push"),
        push
    );
    let mut reply = vec![1u8, 1, 1, 1, 2];
    reply.extend_from_slice(b"34tok\x00");
    assert_eq!(
        encode_binary_reply(s("3").as_ref(), s("4").as_ref(), "t", Status::Ok, &[0])
            .expect("reply"),
        reply
    );
    let mut bcast = vec![2u8, 1, 2];
    bcast.extend_from_slice(b"tev\x01\x02");
    assert_eq!(
        encode_binary_broadcast("t", "ev", &[1, 2]).expect("broadcast"),
        bcast
    );
    assert_eq!(
        encode_binary_broadcast(&"x".repeat(256), "e", &[]),
        Err(EncodeError::TooLong("topic", 256))
    );
}

#[test]
fn malformed_binary_frames_are_refused() {
    assert_eq!(
        Message::decode_binary(Vsn::V2, &[]),
        Err(DecodeError::BinaryTruncated)
    );
    assert_eq!(
        Message::decode_binary(Vsn::V2, &[0, 1, 1]),
        Err(DecodeError::BinaryTruncated)
    );
    assert_eq!(
        Message::decode_binary(Vsn::V2, &[0, 5, 0, 0, 0, b'1']),
        Err(DecodeError::BinaryTruncated)
    );
    assert_eq!(
        Message::decode_binary(Vsn::V2, &[2, 1, 1, b't', b'e']),
        Err(DecodeError::BinaryKind(2))
    );
    assert_eq!(
        Message::decode_binary(Vsn::V2, &[0, 0, 0, 1, 1, 0xff, b'e']),
        Err(DecodeError::BinaryNotUtf8)
    );
    assert_eq!(
        Message::decode_binary(Vsn::V1, &[0, 0, 0, 1, 1, b't', b'e']),
        Err(DecodeError::BinaryInV1)
    );
    // Binary joins make no sense.
    let join = encode_binary_client_push(None, s("1").as_ref(), "t", JOIN, b"{}").expect("encode");
    assert_eq!(
        Inbound::decode_binary(Vsn::V2, &join),
        Err(DecodeError::BinaryNotAllowed)
    );
}
