use super::*;

fn p(s: &str) -> Option<Payload> {
    Some(Payload::from_json(s).expect("json"))
}

/// The vectors of chain's serializer tests: decode, then encode back to
/// the same bytes.
#[test]
fn chain_test_vectors_round_trip_byte_for_byte() {
    let vectors = [
        (
            r#"[0,2,3,"room:1234","_join",{"param1":"foo"}]"#,
            Message::Push {
                join_ref: 2,
                reference: 3,
                topic: "room:1234".into(),
                event: "_join".into(),
                payload: p(r#"{"param1":"foo"}"#),
            },
        ),
        (
            r#"[0,2,4,"room:1234","_leave",{}]"#,
            Message::Push {
                join_ref: 2,
                reference: 4,
                topic: "room:1234".into(),
                event: "_leave".into(),
                payload: p("{}"),
            },
        ),
        (
            r#"[0,2,4,"",""]"#,
            Message::Push {
                join_ref: 2,
                reference: 4,
                topic: String::new(),
                event: String::new(),
                payload: None,
            },
        ),
    ];
    for (bytes, message) in vectors {
        assert_eq!(Message::decode(bytes).as_ref(), Ok(&message), "{bytes}");
        assert_eq!(message.encode(), bytes);
    }
}

#[test]
fn replies_and_broadcasts_encode_positionally() {
    assert_eq!(Message::ok(2, 3, None).encode(), "[1,2,3,0]");
    assert_eq!(
        Message::ok(2, 3, p(r#"{"a":1}"#)).encode(),
        r#"[1,2,3,0,{"a":1}]"#
    );
    assert_eq!(
        Message::refused(2, 3, Reason::UnmatchedTopic).encode(),
        r#"[1,2,3,1,{"reason":"unmatched topic"}]"#
    );
    assert_eq!(
        Message::refused(5, 6, Reason::WildcardTopic).encode(),
        r#"[1,5,6,1,{"reason":"joining topics with wildcard is not allowed"}]"#
    );
    assert_eq!(
        Message::refused(5, 6, Reason::CommaInEvent).encode(),
        r#"[1,5,6,1,{"reason":"commas are not allowed in event"}]"#
    );
    assert_eq!(
        Message::refused(5, 6, Reason::JoinCrashed).encode(),
        r#"[1,5,6,1,{"reason":"join crashed"}]"#
    );
    assert_eq!(
        Message::Broadcast {
            topic: "chat:lobby".into(),
            event: "message".into(),
            payload: p(r#"{"text":"hi"}"#)
        }
        .encode(),
        r#"[2,"chat:lobby","message",{"text":"hi"}]"#
    );
    assert_eq!(
        Message::close(7, 8, "room:1").encode(),
        r#"[0,7,8,"room:1","_close"]"#
    );
    // A server push to one socket has ref 0.
    assert_eq!(
        Message::Push {
            join_ref: 7,
            reference: 0,
            topic: "room:1".into(),
            event: "tick".into(),
            payload: p("1")
        }
        .encode(),
        r#"[0,7,0,"room:1","tick",1]"#
    );
}

#[test]
fn every_kind_round_trips() {
    let messages = [
        Message::ok(1, 2, None),
        Message::refused(1, 2, Reason::NotJoined),
        Message::Broadcast {
            topic: "t\"q".into(),
            event: "e".into(),
            payload: None,
        },
        Message::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: p(r#"[1,"x",null]"#),
        },
        Message::close(-1, 9_007_199_254_740_991, "x"),
    ];
    for m in messages {
        let text = m.encode();
        assert_eq!(Message::decode(&text), Ok(m), "{text}");
    }
}

#[test]
fn malformed_messages_get_typed_errors() {
    let cases: &[(&str, DecodeError)] = &[
        (r#"{"k":0}"#, DecodeError::NotArray),
        ("[0,2]", DecodeError::TooShort(2)),
        ("[0,2,3]", DecodeError::PushTooShort(3)),
        ("[1,2,3]", DecodeError::TooShort(3)),
        (r#"[0,2,3,"t"]"#, DecodeError::PushTooShort(4)),
        (
            r#"[0,2,3,"t","e",{},{}]"#,
            DecodeError::TooLong { max: 6, got: 7 },
        ),
        (r#"[1,2,3,0,{},1]"#, DecodeError::TooLong { max: 5, got: 6 }),
        (
            r#"[2,"t","e",{},1]"#,
            DecodeError::TooLong { max: 4, got: 5 },
        ),
        (r#"["0",2,3,"t","e"]"#, DecodeError::NotInteger(0)),
        (r#"[0,"2",3,"t","e"]"#, DecodeError::NotInteger(1)),
        (r#"[0,2,3.5,"t","e"]"#, DecodeError::NotInteger(2)),
        (r#"[0,2,3,4,"e"]"#, DecodeError::NotString(3)),
        (r#"[0,2,3,"t",null]"#, DecodeError::NotString(4)),
        (r#"[2,1,"e"]"#, DecodeError::NotString(1)),
        (r#"[2,1,"e",{}]"#, DecodeError::NotString(1)),
        (r#"[1,2,3,2]"#, DecodeError::UnknownStatus(2)),
        (r#"[3,2,3,"t","e"]"#, DecodeError::UnknownKind(3)),
    ];
    for (text, want) in cases {
        assert_eq!(Message::decode(text).as_ref(), Err(want), "{text}");
    }
    assert!(matches!(
        Message::decode("[0,2,"),
        Err(DecodeError::Json(_))
    ));
}

#[test]
fn client_messages_are_checked_as_chain_does() {
    assert_eq!(
        Inbound::decode(r#"[0,2,3,"room:1234","_join",{"param1":"foo"}]"#),
        Ok(Inbound::Join {
            join_ref: 2,
            reference: 3,
            topic: "room:1234".into(),
            params: p(r#"{"param1":"foo"}"#)
        })
    );
    assert_eq!(
        Inbound::decode(r#"[0,2,4,"room:1234","_leave",{}]"#),
        Ok(Inbound::Leave {
            join_ref: 2,
            reference: 4,
            topic: "room:1234".into()
        })
    );
    assert_eq!(
        Inbound::decode(r#"[0,2,5,"room:1234","say",{"t":1}]"#),
        Ok(Inbound::Push {
            join_ref: 2,
            reference: 5,
            topic: "room:1234".into(),
            event: "say".into(),
            payload: p(r#"{"t":1}"#)
        })
    );
    let refused = [
        (r#"[0,2,3,"room:*","_join",{}]"#, Reason::WildcardTopic),
        (r#"[0,2,3,"*","_join",{}]"#, Reason::WildcardTopic),
        (r#"[0,2,3,"a,b","_join",{}]"#, Reason::WildcardTopic),
        (r#"[0,2,3,"room:1","a,b",{}]"#, Reason::CommaInEvent),
    ];
    for (text, reason) in refused {
        assert_eq!(
            Inbound::decode(text),
            Err(DecodeError::Refused(reason)),
            "{text}"
        );
        let m = Message::decode(text).expect("decodes as a message");
        assert_eq!(
            refusal(&m, reason).expect("a push").encode(),
            format!(r#"[1,2,3,1,{{"reason":"{}"}}]"#, reason.as_str())
        );
    }
    assert_eq!(Inbound::decode("[1,2,3,0]"), Err(DecodeError::NotAPush));
    assert_eq!(
        Inbound::decode(r#"[2,"t","e",{}]"#),
        Err(DecodeError::NotAPush)
    );
}

#[test]
fn sse_frames_and_decoder_agree() {
    let m = Message::Broadcast {
        topic: "room:1".into(),
        event: "msg".into(),
        payload: p(r#"{"a":"b\nc"}"#),
    };
    let frame = m.encode_sse();
    assert_eq!(frame, "data: [2,\"room:1\",\"msg\",{\"a\":\"b\\nc\"}]\n\n");
    let mut d = SseDecoder::new();
    // Split anywhere, events come out whole.
    let stream = format!(
        "{frame}: keepalive\n\n{}",
        Message::ok(1, 2, None).encode_sse()
    );
    let mut events = Vec::new();
    for chunk in stream.as_bytes().chunks(5) {
        events.extend(d.feed(chunk));
    }
    assert_eq!(events.len(), 2);
    assert_eq!(Message::decode(&events[0]), Ok(m));
    assert_eq!(events[1], "[1,1,2,0]");
    // CRLF line ends, multi-line data, other fields.
    let mut d = SseDecoder::new();
    assert_eq!(
        d.feed(b"event: x\r\ndata:a\r\ndata: b\r\nid: 3\r\n\r\ndata"),
        vec!["a\nb".to_string()]
    );
    assert_eq!(d.last_id(), Some("3"));
    assert_eq!(d.feed(b"\n\n"), vec![String::new()]);
}
