use super::*;
use crate::codec::{Codec, Frames, Slot};
use crate::outbox::Outbox;
use tokio_tungstenite::tungstenite::Utf8Bytes;

struct Raw;

impl Codec for Raw {
    fn protocol(&self) -> &'static str {
        "raw"
    }
    fn encode(&self, d: &Delivery, _: Slot, _: &Recipient<'_>) -> Frames {
        Frames::One(d.data.clone())
    }
}

fn conn(id: u64, home: Option<&str>, root: &str) -> Arc<Conn> {
    Arc::new(Conn {
        id,
        client_id: Arc::from(format!("c{id}")),
        home: home.map(Arc::from),
        outbox: Outbox::new(1 << 20),
        codec: Arc::new(Raw),
        state: Mutex::new(ConnState {
            root_id: Arc::from(root),
            token: None,
            authenticated: false,
            expires_at: 0,
            channels: HashSet::default(),
            allowed_channels: None,
            info: None,
            positioned: HashMap::default(),
            churn: Default::default(),
            tag: None,
        }),
        permit: Mutex::new(None),
    })
}

#[test]
fn counts_follow_register_subscribe_and_unregister() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let a = conn(1, Some("room"), "u1");
    let b = conn(2, Some("room"), "u1");
    let change = hub.register(&a);
    assert_eq!(change.channels_added, vec![Arc::<str>::from("room")]);
    assert_eq!(change.users_added, vec![Arc::<str>::from("u1")]);
    assert!(hub.register(&b).is_empty());
    hub.subscribe(&a, &["x".into(), "x".into(), "y".into()], 10)
        .expect("under limit");
    assert_eq!(
        hub.counts(),
        HubCounts {
            connections: 2,
            users: 1,
            channels: 3,
            subscriptions: 4
        }
    );
    assert_eq!(hub.subscribe(&a, &["z".into()], 3), Err(3));
    let change = hub.unregister(&a);
    assert_eq!(change.channels_removed.len(), 2);
    assert!(change.users_removed.is_empty());
    hub.unregister(&b);
    assert_eq!(hub.counts(), HubCounts::default());
}

#[test]
fn a_connection_matching_several_targets_gets_one_copy() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let a = conn(1, Some("r1"), "u");
    hub.register(&a);
    hub.subscribe(&a, &["r2".into()], 10).expect("ok");
    let frame = Utf8Bytes::from("{}");
    let d = Delivery::new(
        Target::Channels(vec!["r1".into(), "r2".into()]),
        frame.clone(),
    );
    assert_eq!(hub.deliver(&d), 1);
    let d = Delivery::new(Target::Clients(vec!["c1".into(), "c1".into()]), frame);
    assert_eq!(hub.deliver(&d), 1);
}

#[test]
fn the_home_channel_cannot_be_left_and_other_protocols_have_none() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let a = conn(1, Some("home"), "u");
    hub.register(&a);
    assert!(hub.unsubscribe(&a, &["home".into()]).is_empty());
    assert!(a.is_member("home"));
    let b = conn(2, None, "v");
    let change = hub.register(&b);
    assert!(change.channels_added.is_empty());
    assert_eq!(hub.counts().channels, 1);
}

#[test]
fn the_shared_member_list_follows_joins_and_leaves() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let a = conn(1, Some("room"), "u1");
    let b = conn(2, None, "u2");
    hub.register(&a);
    hub.register(&b);
    let to_room = || Delivery::new(Target::Channels(vec!["room".into()]), Utf8Bytes::from("{}"));
    assert_eq!(hub.deliver(&to_room()), 1);
    let first = hub.shared_recipients(&to_room().target);
    assert!(
        matches!((&first, &hub.shared_recipients(&to_room().target)),
            (Recipients::Shared(x), Recipients::Shared(y)) if Arc::ptr_eq(x, y)),
        "publishes share one snapshot while nobody joins or leaves"
    );
    hub.subscribe(&b, &["room".into()], 10)
        .expect("under limit");
    assert_eq!(
        first.len(),
        1,
        "a snapshot taken before the join stays as it was"
    );
    assert_eq!(
        hub.deliver(&to_room()),
        2,
        "the join is seen by the next publish"
    );
    hub.unsubscribe(&b, &["room".into()]);
    assert_eq!(hub.deliver(&to_room()), 1);
    let mut batch = std::collections::VecDeque::new();
    b.outbox.take(&mut batch);
    assert_eq!(
        batch.len(),
        1,
        "b got only the publish while it was a member"
    );
    hub.unregister(&a);
    assert_eq!(hub.deliver(&to_room()), 0);
    assert!(hub.shared_recipients(&to_room().target).is_empty());
}

/// A publication at `offset` (epoch "e") of channel "h", its data the offset.
fn at(offset: u64) -> Delivery {
    let mut d = Delivery::new(
        Target::Channels(vec!["h".into()]),
        Utf8Bytes::from(offset.to_string()),
    );
    d.position = Some(crate::delivery::Position {
        offset,
        epoch: "e".into(),
    });
    d
}

/// What `conn`'s outbox holds, as text.
fn queued(conn: &Conn) -> Vec<String> {
    let mut batch = std::collections::VecDeque::new();
    conn.outbox.take(&mut batch);
    batch.iter().map(|f| f.as_str().to_string()).collect()
}

/// A member of "h", positioned at offset 1 of epoch "e".
fn positioned_member(hub: &Hub) -> Arc<Conn> {
    let c = conn(1, None, "u1");
    hub.register(&c);
    hub.subscribe(&c, &["h".into()], 10).expect("under limit");
    c.state.lock().positioned.insert(
        Arc::from("h"),
        crate::conn::ChannelPos {
            epoch: Some(Arc::from("e")),
            last: 1,
            recovering: None,
        },
    );
    c
}

#[test]
fn a_gap_without_a_running_node_passes_what_was_held_on() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let c = positioned_member(&hub);
    hub.deliver(&at(2));
    hub.deliver(&at(2));
    hub.deliver(&at(4));
    assert_eq!(queued(&c), ["2", "4"], "a copy dropped, the gap passed on");
    let state = c.state.lock();
    let pos = &state.positioned["h"];
    assert_eq!(pos.last, 4);
    assert!(pos.recovering.is_none(), "no recovery left open");
}

#[test]
fn flushing_what_was_held_stops_at_a_gap_and_keeps_the_rest_held() {
    let hub = Hub::new(Arc::new(Metrics::new("t")));
    let c = positioned_member(&hub);
    let mut state = c.state.lock();
    let pos = state.positioned.get_mut("h").expect("positioned");
    hub.begin_recovery(pos);
    for offset in [2, 4, 5] {
        let held = pos.recovering.as_mut().expect("recovering");
        hub.hold(&c, held, &at(offset));
    }
    let mut frames = Vec::new();
    let from = hub.flush_held(&c, pos, &mut frames, true);
    assert_eq!(frames, ["2"]);
    assert_eq!(
        from,
        Some(crate::delivery::Position {
            offset: 2,
            epoch: "e".into()
        }),
        "read history after offset 2"
    );
    let held: Vec<u64> = pos
        .recovering
        .as_ref()
        .expect("still recovering")
        .deliveries
        .iter()
        .filter_map(|d| d.position.as_ref().map(|p| p.offset))
        .collect();
    assert_eq!(held, [4, 5], "the rest stays held, in order");
    let mut frames = Vec::new();
    assert_eq!(hub.flush_held(&c, pos, &mut frames, false), None);
    assert_eq!(frames, ["4", "5"], "passed on past the gap");
    assert!(pos.recovering.is_none());
}
