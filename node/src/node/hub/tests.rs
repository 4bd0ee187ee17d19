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
