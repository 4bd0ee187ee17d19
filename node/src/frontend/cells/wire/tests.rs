use super::*;

#[test]
fn control_messages_decode_and_errors_encode_as_cells_does() {
    assert_eq!(
        Control::decode(r#"{"@type":"subscribe","jwt":"eyJ.a.b"}"#),
        Ok(Control::Subscribe {
            jwt: "eyJ.a.b".into()
        })
    );
    assert_eq!(
        Control::decode(r#"{"@type":"unsubscribe"}"#),
        Ok(Control::Unsubscribe)
    );
    assert_eq!(
        Control::decode(r#"{"@type":"hello","x":1}"#),
        Ok(Control::Other("hello".into()))
    );
    assert_eq!(
        Control::decode(r#"{"@type":"subscribe","jwt":""}"#),
        Err(ControlError::EmptyJwt)
    );
    assert_eq!(
        Control::decode(r#"{"@type":"subscribe"}"#),
        Err(ControlError::EmptyJwt)
    );
    assert!(matches!(
        Control::decode("{nope"),
        Err(ControlError::Json(_))
    ));
    assert!(matches!(
        Control::decode(r#"{"@type":3}"#),
        Err(ControlError::Json(_))
    ));
    assert_eq!(
        error_frame(EMPTY_JWT_EVENT),
        r#"{"@type":"error","jwt":"","error":"empty jwt"}"#
    );
    assert_eq!(
        error_frame("token \"x\" expired"),
        r#"{"@type":"error","jwt":"","error":"token \"x\" expired"}"#
    );
}

fn event(text: &str) -> NodeChangeEvent {
    serde_json::from_str(text).expect("event")
}

#[test]
fn node_events_keep_protojson_conventions() {
    let e = event(
        r#"{"Type":"UPDATE_META","Target":{"Uuid":"n1","Path":"a/b","Size":"12","MTime":1700000000,"MetaStore":{"name":"\"b\""},"Mode":420}}"#,
    );
    assert_eq!(e.kind, EventType::UpdateMeta);
    let t = e.target.as_ref().expect("target");
    assert_eq!((t.size, t.mtime), (12, 1_700_000_000));
    assert_eq!(t.other.get("Mode"), Some(&Value::from(420)));
    // int64 out as strings, unknown fields kept, zero values left out.
    assert_eq!(
        serde_json::to_string(&e).expect("json"),
        r#"{"Type":"UPDATE_META","Target":{"Uuid":"n1","Path":"a/b","MTime":"1700000000","Size":"12","MetaStore":{"name":"\"b\""},"Mode":420}}"#
    );
    // A CREATE has no Type on the wire, and no Type reads as CREATE.
    let c = event(r#"{"Type":"CREATE","Target":{"Uuid":"n1"}}"#);
    assert_eq!(
        serde_json::to_string(&c).expect("json"),
        r#"{"Target":{"Uuid":"n1"}}"#
    );
    assert_eq!(event(r#"{"Target":{"Uuid":"n1"}}"#).kind, EventType::Create);
    // Enum numbers are accepted.
    assert_eq!(event(r#"{"Type":5}"#).kind, EventType::Delete);
    assert!(serde_json::from_str::<NodeChangeEvent>(r#"{"Type":"EXPLODE"}"#).is_err());
    assert!(serde_json::from_str::<NodeChangeEvent>(
        r#"{"Type":"UPDATE_META","Target":{"Size":"x"}}"#
    )
    .is_err());
}

#[test]
fn any_create_in_a_burst_makes_a_create() {
    let burst = [
        event(r#"{"Type":"CREATE","Target":{"Uuid":"n1","Path":"a/f","Etag":"e1","Size":"1"}}"#),
        event(r#"{"Type":"UPDATE_CONTENT","Target":{"Uuid":"n1","Etag":"e2","Size":"5"}}"#),
        event(r#"{"Type":"UPDATE_META","Target":{"Uuid":"n1","MetaStore":{"k":"1"}}}"#),
    ];
    let m = merge(&burst).expect("merged");
    assert_eq!(m.event.kind, EventType::Create);
    assert!(!m.refresh_target);
    let t = m.event.target.expect("target");
    assert_eq!((t.path.as_str(), t.etag.as_str(), t.size), ("a/f", "e2", 5));
    assert_eq!(t.meta_store.get("k").map(String::as_str), Some("1"));
}

#[test]
fn without_create_the_last_type_wins_and_metadata_merges_later_first() {
    let burst = [
        event(
            r#"{"Type":"UPDATE_META","Source":{"Uuid":"s1"},"Target":{"Uuid":"n1","MetaStore":{"a":"1","b":"1"}}}"#,
        ),
        event(
            r#"{"Type":"UPDATE_CONTENT","Target":{"Uuid":"n1","Path":"x/y","MetaStore":{"b":"2"}}}"#,
        ),
        event(
            r#"{"Type":"UPDATE_META","Source":{"Uuid":"s3"},"Target":{"Uuid":"n1","Etag":"temporary","MetaStore":{"c":"3"}}}"#,
        ),
    ];
    let m = merge(&burst).expect("merged");
    assert_eq!(m.event.kind, EventType::UpdateMeta);
    assert!(m.refresh_target);
    assert_eq!(m.event.source.as_ref().map(|s| s.uuid.as_str()), Some("s3"));
    let t = m.event.target.expect("target");
    assert_eq!(t.path, "x/y");
    // A temporary etag does not replace a known one (here: none).
    assert_eq!(t.etag, "");
    let meta: Vec<(&str, &str)> = t
        .meta_store
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(meta, vec![("a", "1"), ("b", "2"), ("c", "3")]);
    // One event merges to itself; none merge to nothing.
    let one = merge(&burst[..1]).expect("one");
    assert_eq!(one.event, burst[0]);
    assert_eq!(merge(&[]), None);
}

#[test]
fn merging_fifty_updates_gives_one_event_with_the_last_values() {
    let burst: Vec<NodeChangeEvent> = (1..=50)
            .map(|i| {
                event(&format!(
                    r#"{{"Type":"UPDATE_META","Target":{{"Uuid":"n1","Size":"{i}","MetaStore":{{"k{}":"{i}","last":"{i}"}}}}}}"#,
                    i % 5
                ))
            })
            .collect();
    let m = merge(&burst).expect("merged");
    let t = m.event.target.expect("target");
    assert_eq!(t.size, 50);
    assert_eq!(t.meta_store.len(), 6);
    assert_eq!(t.meta_store["last"], "50");
    assert_eq!(t.meta_store["k0"], "50");
    assert_eq!(t.meta_store["k1"], "46");
}

#[test]
fn chat_requests_decode_from_what_the_web_client_sends() {
    assert_eq!(
        ChatRequest::decode(r#"{"@type":"JOIN","Room":{"Type":"NODE","RoomTypeObject":"n-1"}}"#),
        Ok(ChatRequest::Join {
            room: ChatRoom {
                kind: RoomType::Node,
                type_object: "n-1".into(),
                ..ChatRoom::default()
            },
            ping: false
        })
    );
    assert!(matches!(
        ChatRequest::decode(
            r#"{"@type":"JOIN","Room":{"Type":"USER","RoomTypeObject":"bob"},"Message":{"Message":"PING"}}"#
        ),
        Ok(ChatRequest::Join { ping: true, .. })
    ));
    // No @type is JOIN (protojson's zero value).
    assert!(matches!(
        ChatRequest::decode(r#"{"Room":{"Type":"GLOBAL"}}"#),
        Ok(ChatRequest::Join { ping: false, .. })
    ));
    assert_eq!(
        ChatRequest::decode(
            r#"{"@type":"HISTORY","Room":{"Type":"NODE","RoomTypeObject":"n-1"},"Message":{"Message":"{\"Offset\":20,\"Limit\":10}"}}"#
        ),
        Ok(ChatRequest::History {
            room: ChatRoom {
                kind: RoomType::Node,
                type_object: "n-1".into(),
                ..ChatRoom::default()
            },
            range: HistoryRange {
                offset: 20,
                limit: 10
            }
        })
    );
    assert!(matches!(
        ChatRequest::decode(r#"{"@type":"HISTORY","Room":{"Type":"NODE"}}"#),
        Ok(ChatRequest::History {
            range: HistoryRange {
                offset: 0,
                limit: 0
            },
            ..
        })
    ));
    let post =
        ChatRequest::decode(r#"{"@type":"POST","Message":{"RoomUuid":"r1","Message":"hello"}}"#)
            .expect("post");
    assert_eq!(
        post,
        ChatRequest::Post {
            message: ChatMessage {
                room_uuid: "r1".into(),
                message: "hello".into(),
                ..ChatMessage::default()
            }
        }
    );
    assert!(matches!(
        ChatRequest::decode(r#"{"@type":"DELETE_MSG","Message":{"Uuid":"m1","RoomUuid":"r1","Author":"alice","Timestamp":"1700000000"}}"#),
        Ok(ChatRequest::DeleteMsg { message }) if message.timestamp == 1_700_000_000 && message.author == "alice"
    ));
    assert_eq!(
        ChatRequest::decode(r#"{"@type":"subscribe","jwt":"t"}"#),
        Ok(ChatRequest::Control(Control::Subscribe { jwt: "t".into() }))
    );
    assert_eq!(
        ChatRequest::decode(r#"{"@type":"ROOM_UPDATE","Room":{}}"#),
        Ok(ChatRequest::Ignored(WsMessageType::RoomUpdate))
    );
}

#[test]
fn bad_chat_requests_get_typed_errors() {
    let cases: &[(&str, ChatError)] = &[
        (r#"{"@type":"JOIN"}"#, ChatError::MissingRoom("JOIN")),
        (r#"{"@type":"LEAVE"}"#, ChatError::MissingRoom("LEAVE")),
        (
            r#"{"@type":"POST","Room":{}}"#,
            ChatError::MissingMessage("POST"),
        ),
        (
            r#"{"@type":"DELETE_MSG"}"#,
            ChatError::MissingMessage("DELETE_MSG"),
        ),
        (
            r#"{"@type":"HISTORY","Room":{},"Message":{"Message":"{\"Offset\":-1,\"Limit\":10}"}}"#,
            ChatError::NegativeRange,
        ),
        (
            r#"{"@type":"HISTORY","Room":{},"Message":{"Message":"{\"Limit\":-5}"}}"#,
            ChatError::NegativeRange,
        ),
        (r#"{"@type":"subscribe","jwt":""}"#, ChatError::EmptyJwt),
    ];
    for (text, want) in cases {
        assert_eq!(ChatRequest::decode(text).as_ref(), Err(want), "{text}");
    }
    for text in [
        "nope",
        r#"{"@type":"SHOUT"}"#,
        r#"{"@type":"POST","Message":{"Timestamp":"soon"}}"#,
    ] {
        assert!(
            matches!(ChatRequest::decode(text), Err(ChatError::Json(_))),
            "{text}"
        );
    }
    assert!(matches!(
        ChatRequest::decode(r#"{"@type":"HISTORY","Room":{},"Message":{"Message":"[1]"}}"#),
        Err(ChatError::BadRange(_))
    ));
}

#[test]
fn server_chat_frames_encode_as_cells_does() {
    let room = ChatRoom {
        uuid: "r1".into(),
        kind: RoomType::Node,
        type_object: "n-1".into(),
        label: "f.txt".into(),
        users: vec!["alice".into(), "bob".into()],
        last_updated: 1_700_000_000,
    };
    assert_eq!(
        room_update(&room),
        r#"{"@type":"ROOM_UPDATE","Room":{"Uuid":"r1","Type":"NODE","RoomTypeObject":"n-1","RoomLabel":"f.txt","Users":["alice","bob"],"LastUpdated":1700000000}}"#
    );
    let msg = ChatMessage {
        uuid: "m1".into(),
        room_uuid: "r1".into(),
        message: "hi".into(),
        author: "alice".into(),
        timestamp: 1_700_000_001,
        ..ChatMessage::default()
    };
    assert_eq!(
        chat_message(&msg),
        r#"{"Uuid":"m1","RoomUuid":"r1","Message":"hi","Author":"alice","Timestamp":"1700000001"}"#
    );
    assert_eq!(
        delete_msg(&msg),
        r#"{"@type":"DELETE_MSG","Message":{"Uuid":"m1","RoomUuid":"r1","Message":"hi","Author":"alice","Timestamp":"1700000001"}}"#
    );
    assert_eq!(
        may_have_more("r1", 1_700_000_001, 20, 10),
        r#"{"@type":"MAY_HAVE_MORE","RoomUuid":"r1","Timestamp":1700000001,"Offset":20,"Limit":10}"#
    );
    // A GLOBAL room has no Type on the wire; frames read back equal.
    let global = ChatRoom {
        uuid: "g".into(),
        ..ChatRoom::default()
    };
    assert_eq!(
        room_update(&global),
        r#"{"@type":"ROOM_UPDATE","Room":{"Uuid":"g"}}"#
    );
    let back: WebSocketMessage = serde_json::from_str(&room_update(&room)).expect("json");
    assert_eq!(back.room, Some(room));
    let back: ChatMessage = serde_json::from_str(&chat_message(&msg)).expect("json");
    assert_eq!(back, msg);
}
