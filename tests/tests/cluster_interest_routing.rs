//! Interest routing (`--relay-interest-routing`): a node publishes a
//! channel's message to Redis only when a peer listens to it, and a join
//! answered on another node still receives everything published after the
//! answer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pubmesh_tests::harness::{
    cluster_slot, eventually, hs256, patience, see_each_other, two_nodes, Client, Node, Redis,
};
use serde_json::{json, Value};

const SECRET: &str = "interest-secret";

/// Flags for nodes whose test clients publish as fast as they can.
fn fast(url: &str) -> Vec<String> {
    [
        "--redis-url",
        url,
        "--relay-interest-routing",
        "--client-channel-publish",
        "any",
        "--client-rate",
        "1000000",
        "--client-burst",
        "1000000",
        "--address-frame-rate",
        "0",
        "--client-user-publish",
        "any",
        "--jwt-secret",
        SECRET,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Two nodes of `redis` started with [`fast`], that see each other.
async fn fast_nodes(redis: &Redis) -> (Node, Node) {
    let args = fast(&redis.url());
    two_nodes(&strs(&args)).await
}

/// Three nodes of `redis` started with [`fast`], that see each other.
async fn three_fast_nodes(redis: &Redis) -> (Node, Node, Node) {
    let args = fast(&redis.url());
    let a = Node::start(&strs(&args)).await;
    let b = Node::start(&strs(&args)).await;
    let c = Node::start(&strs(&args)).await;
    see_each_other(&[&a, &b, &c]).await;
    (a, b, c)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A client of `node` publishing `{"n": 0}`, `{"n": 1}` … to a channel (or
/// a user) until stopped; `started` is the number of publishes begun so far.
struct Publisher {
    started: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Publisher {
    async fn start(node: &Node, channel: &str) -> Publisher {
        Publisher::start_to(node, json!({"type": "channel", "channel_ids": [channel]})).await
    }

    /// Publish with the frame `to` (its `type` and targets), adding `data`.
    async fn start_to(node: &Node, to: Value) -> Publisher {
        Publisher::start_tagged(node, to, Value::Null).await
    }

    /// [`Publisher::start_to`], with `"c": tag` in the data unless null; a
    /// tagged publisher paces itself (16 messages per millisecond at most).
    async fn start_tagged(node: &Node, to: Value, tag: Value) -> Publisher {
        let mut client = node.client("").await;
        let started = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (started, stop) = (started.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    started.store(n + 1, Ordering::Release);
                    let mut frame = to.clone();
                    frame["data"] = json!({"n": n});
                    if !tag.is_null() {
                        frame["data"]["c"] = tag.clone();
                    }
                    client.send(frame).await;
                    n += 1;
                    if !tag.is_null() && n % 16 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else if n % 64 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                // The node handles a socket's frames in order: once this
                // one is answered, every publish above is on its way, and
                // a message the test sends next by another path comes
                // after them.
                client
                    .send(json!({"type": "connection", "ref": "drained"}))
                    .await;
                client.recv_until(|f| f["ref"] == "drained").await;
                n
            })
        };
        Publisher {
            started,
            stop,
            task,
        }
    }

    /// Let it publish `more` messages beyond those begun now, stop it, and
    /// return how many it published in all, once the node has taken every
    /// one of them (on a busy host its socket can hold a backlog).
    async fn finish_after(self, more: u64) -> u64 {
        let target = self.started.load(Ordering::Acquire) + more;
        eventually("publishes", patience(60), || {
            let started = self.started.clone();
            async move { (started.load(Ordering::Acquire) >= target).then_some(()) }
        })
        .await;
        self.stop.store(true, Ordering::Release);
        self.task.await.expect("publisher")
    }
}

/// Join `channel` on `member`'s node while `publisher` runs; then check
/// that every message begun after the answer arrived, in order, none twice,
/// and that from the first one received nothing is missing. Returns how
/// many were published.
async fn join_during_publishing(member: &mut Client, channel: &str, publisher: Publisher) -> u64 {
    member
        .send(json!({"type": "subscribe", "channel_ids": [channel], "ref": channel}))
        .await;
    let mut received: Vec<u64> = Vec::new();
    loop {
        let frame = member.recv().await;
        if frame["ref"] == channel {
            assert_eq!(frame["type"], "subscribed", "{frame}");
            break;
        }
        received.push(number(&frame));
    }
    // Every publish begun from here on started after the answer.
    let promised = publisher.started.load(Ordering::Acquire);
    everything_after(member, channel, received, promised, publisher).await
}

/// Check that `member`, which has `received` so far and was answered when
/// `promised` publishes had begun, receives every message begun after
/// that, in order, none twice, and that from the first one it received
/// nothing is missing. Returns how many were published.
async fn everything_after(
    member: &mut Client,
    channel: &str,
    mut received: Vec<u64>,
    promised: u64,
    publisher: Publisher,
) -> u64 {
    let total = publisher.finish_after(2000).await;
    while received.last().is_none_or(|&n| n + 1 < total) {
        let frame = member.recv_within(patience(20)).await;
        received.push(number(&frame));
    }
    member.expect_silence(Duration::from_millis(300)).await;
    let first = received[0];
    let expected: Vec<u64> = (first..total).collect();
    assert_eq!(
        received.len(),
        expected.len(),
        "{channel}: from {first}, {} received of {} ({} promised from {promised})",
        received.len(),
        expected.len(),
        total - promised
    );
    assert_eq!(received, expected, "{channel}: a gap or a copy");
    assert!(
        first <= promised,
        "{channel}: the first message after the answer ({promised}) is missing; first received {first}"
    );
    eprintln!("{channel}: {total} published, received from {first}, answer at {promised}");
    total
}

fn number(frame: &Value) -> u64 {
    frame["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("not a numbered message: {frame}"))
}

#[tokio::test]
async fn a_member_joining_on_b_while_a_publishes_at_full_rate_gets_everything_after_the_answer() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = fast_nodes(&redis).await;
    let mut member = b.client("").await;
    for i in 0..6 {
        let channel = format!("hot-{i}");
        let publisher = Publisher::start(&a, &channel).await;
        // A is well into its run, skipping the channel, when the join comes.
        eventually("skipping", patience(30), || async {
            (a.metric("pubmesh_relay_skipped_total").await > 0.0).then_some(())
        })
        .await;
        let _ = join_during_publishing(&mut member, &channel, publisher).await;
    }
}

/// A channel that one peer alone listens to goes to that peer's inbox
/// (`--relay-node-addressing`, on by default), where the envelopes of
/// different channels meet; once a second peer joins it goes to the
/// channel's topic. A member on B of `pair` and of two more channels,
/// subscribed before A starts publishing to them at full rate,
/// receives every message of each once and in order across that change; the
/// member that joins `pair` on C while A publishes receives everything after
/// its answer.
#[tokio::test]
async fn a_channel_one_peer_listens_to_goes_to_its_inbox_until_a_second_peer_joins() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b, c) = three_fast_nodes(&redis).await;
    let addressed = "pubmesh_relay_addressed_total";
    let channels = ["pair", "side-1", "side-2"];
    let mut on_b = b.client("").await;
    on_b.send(json!({"type": "subscribe", "channel_ids": channels, "ref": 1}))
        .await;
    let reply = on_b.recv_until(|f| f["ref"] == 1).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    // The last message of each channel, sent once its publisher stopped,
    // ends B's reading of it.
    const LAST: u64 = 1 << 40;
    let mut publishers = Vec::new();
    for channel in channels {
        let to = json!({"type": "channel", "channel_ids": [channel]});
        publishers.push(Publisher::start_tagged(&a, to, json!(channel)).await);
    }
    let reader = tokio::spawn(async move {
        let mut got: std::collections::HashMap<String, Vec<u64>> = Default::default();
        let mut ended = 0;
        while ended < channels.len() {
            let frame = on_b.recv_within(patience(30)).await;
            let n = number(&frame);
            ended += usize::from(n == LAST);
            let channel = frame["c"].as_str().unwrap_or("?").to_string();
            got.entry(channel).or_default().push(n);
        }
        got
    });
    eventually("A addressing B's inbox", patience(30), || async {
        (a.metric(addressed).await > 0.0).then_some(())
    })
    .await;
    let mut on_c = c.client("").await;
    let pair = publishers.remove(0);
    let mut totals = vec![join_during_publishing(&mut on_c, "pair", pair).await];
    for side in publishers {
        totals.push(side.finish_after(100).await);
    }
    let before = a.metric(addressed).await;
    for channel in channels {
        let (status, body) = a
            .post(
                "/api/notify/channels",
                json!({"channel_ids": [channel], "data": {"n": LAST, "c": channel}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let got = reader.await.expect("B's reader");
    let lagged = "pubmesh_relay_dropped_total{reason=\"lagged\"}";
    assert_eq!(
        b.metric(lagged).await,
        0.0,
        "B fell behind its receive ring"
    );
    for (channel, total) in channels.iter().zip(totals) {
        let expected: Vec<u64> = (0..total).chain([LAST]).collect();
        let received = &got[*channel];
        assert_eq!(
            received.len(),
            expected.len(),
            "B, {channel}: a gap or a copy"
        );
        assert_eq!(received, &expected, "B, {channel}: out of order");
    }
    assert_eq!(number(&on_c.recv().await), LAST);
    // Two peers listen to `pair` now: A publishes to its topic, not to an inbox.
    for n in 0..20 {
        notify(&a, "pair", n).await;
        assert_eq!(number(&on_c.recv().await), n);
    }
    assert_eq!(a.metric(addressed).await, before + 2.0);
}

/// Wait until `a` keeps more publishes off Redis than now: what it
/// publishes at this moment no peer listens to.
async fn skipping(a: &Node) {
    let before = a.metric("pubmesh_relay_skipped_total").await;
    eventually("skipping", patience(30), || async {
        (a.metric("pubmesh_relay_skipped_total").await > before).then_some(())
    })
    .await;
}

/// A member that joins a channel at connect time (`channel_id` in the URL)
/// on B while A publishes to it at full rate, skipping it, receives
/// everything published after its connection frame: the frame is the
/// join's answer.
#[tokio::test]
async fn a_connect_time_member_on_b_gets_everything_published_after_its_connection_frame() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = fast_nodes(&redis).await;
    for i in 0..6 {
        let channel = format!("home-{i}");
        let to = json!({"type": "channel", "channel_ids": [channel]});
        let member = connect_during_publishing(&a, &b, to, &format!("channel_id={channel}")).await;
        assert_eq!(member.channel_id(), channel);
    }
}

/// Connect to `b` with `query` while `a` publishes with the frame `to` at
/// full rate, keeping it off Redis; then check that everything begun
/// after the connection frame arrives.
async fn connect_during_publishing(a: &Node, b: &Node, to: Value, query: &str) -> Client {
    let publisher = Publisher::start_to(a, to).await;
    skipping(a).await;
    // `client` returns once the connection frame, the first frame, arrived.
    let mut member = b.client(query).await;
    let promised = publisher.started.load(Ordering::Acquire);
    let _ = everything_after(&mut member, query, Vec::new(), promised, publisher).await;
    member
}

/// A user's first connection on B, made while A publishes to that user at
/// full rate, receives everything published after its connection frame.
#[tokio::test]
async fn a_users_first_connection_on_b_gets_everything_published_after_its_connection_frame() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b) = fast_nodes(&redis).await;
    for i in 0..6 {
        let user = format!("n::user-{i}");
        let to = json!({"type": "user", "root_ids": [user]});
        let token = hs256(SECRET, &user, 300);
        let member = connect_during_publishing(&a, &b, to, &format!("token={token}")).await;
        assert_eq!(member.root_id(), user);
    }
    // A user whose topic B takes on through `change_user` is promised the
    // same from the connection frame that answers it.
    let user = "n::changed";
    let publisher = Publisher::start_to(&a, json!({"type": "user", "root_ids": [user]})).await;
    let mut member = b.client("").await;
    skipping(&a).await;
    member
        .send(json!({"type": "change_user", "token": hs256(SECRET, user, 300), "ref": "cu"}))
        .await;
    let mut received = Vec::new();
    loop {
        let frame = member.recv().await;
        if frame["ref"] == "cu" {
            assert_eq!(frame["type"], "connection", "{frame}");
            assert_eq!(frame["data"]["root_id"], user, "{frame}");
            break;
        }
        received.push(number(&frame));
    }
    let promised = publisher.started.load(Ordering::Acquire);
    everything_after(&mut member, user, received, promised, publisher).await;
}

#[tokio::test]
async fn a_node_started_while_a_publishes_gets_everything_after_the_answer() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let args = fast(&url);
    let a = Node::start(&strs(&args)).await;
    let publisher = Publisher::start(&a, "fresh").await;
    let b = Node::start(&strs(&args)).await;
    let mut member = b.client("").await;
    join_during_publishing(&mut member, "fresh", publisher).await;
    see_each_other(&[&a, &b]).await;
}

/// `node` publishes `{"n": n}` to `channel` through its API.
async fn notify(node: &Node, channel: &str, n: u64) -> Value {
    let (status, body) = node
        .post(
            "/api/notify/channels",
            json!({"channel_ids": [channel], "data": {"n": n}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn publish_and_receive(node: &Node, member: &mut Client, channel: &str, n: u64) {
    notify(node, channel, n).await;
    let got = member.recv_until(|f| f.get("n").is_some()).await;
    assert_eq!(got, json!({"n": n}), "a publish on {channel}");
}

/// PUBLISH commands `redis` has run.
async fn redis_publishes(redis: &Redis) -> u64 {
    let text = redis
        .cmd(&["INFO", "commandstats"])
        .await
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("cmdstat_publish:calls="))
        .and_then(|l| l.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn publishes_no_peer_listens_to_stay_off_redis_until_a_member_joins_elsewhere() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let (a, b) = two_nodes(&["--redis-url", url.as_str(), "--relay-interest-routing"]).await;
    let mut local = a.client("").await;
    local
        .send(json!({"type": "subscribe", "channel_ids": ["solo"], "ref": 1}))
        .await;
    local.recv_until(|f| f["ref"] == 1).await;
    // Once A knows B's interest, a publish only A's member needs stays off Redis.
    let skipped = "pubmesh_relay_skipped_total";
    let deadline = std::time::Instant::now() + patience(30);
    loop {
        let body = notify(&a, "solo", 0).await;
        local.recv_until(|f| f.get("n").is_some()).await;
        if body["relay"] == "none" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A never skipped: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (skipped_before, redis_before) = (a.metric(skipped).await, redis_publishes(&redis).await);
    for n in 1..=300 {
        let body = notify(&a, "solo", n).await;
        assert_eq!(body["relay"], "none", "{body}");
        assert_eq!(local.recv().await, json!({"n": n}));
    }
    assert_eq!(a.metric(skipped).await - skipped_before, 300.0);
    // Heartbeats and interest beacons still go through Redis, far fewer.
    let redis_publishes = redis_publishes(&redis).await - redis_before;
    assert!(redis_publishes < 100, "{redis_publishes} PUBLISH calls");

    // A member on B: the very next publish after its answer reaches it.
    let mut remote = b.client("").await;
    remote
        .send(json!({"type": "subscribe", "channel_ids": ["solo"], "ref": 2}))
        .await;
    let reply = remote.recv_until(|f| f["ref"] == 2).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let body = notify(&a, "solo", 1000).await;
    assert_eq!(body["relay"], "sent", "{body}");
    assert_eq!(remote.recv().await, json!({"n": 1000}));
    assert_eq!(
        local.recv_until(|f| f.get("n").is_some()).await,
        json!({"n": 1000})
    );

    // It leaves: once B lets the subscription go, A skips again.
    remote
        .send(json!({"type": "unsubscribe", "channel_ids": ["solo"], "ref": 3}))
        .await;
    remote.recv_until(|f| f["ref"] == 3).await;
    let deadline = std::time::Instant::now() + patience(30);
    loop {
        let body = notify(&a, "solo", 2000).await;
        local.recv_until(|f| f.get("n").is_some()).await;
        if body["relay"] == "none" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "A never skipped again: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    remote.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn views_are_rebuilt_after_a_peer_restart_and_a_redis_restart() {
    let _slot = cluster_slot().await;
    let mut redis = Redis::start().await;
    let url = redis.url();
    let (a, mut b) = two_nodes(&["--redis-url", url.as_str(), "--relay-interest-routing"]).await;
    let mut member = b.client("").await;
    member
        .send(json!({"type": "subscribe", "channel_ids": ["room"], "ref": 1}))
        .await;
    member.recv_until(|f| f["ref"] == 1).await;
    publish_and_receive(&a, &mut member, "room", 1).await;

    // B dies without a word and comes back under the same id with no
    // members; a member joins again.
    b.sigkill();
    b.restart().await;
    see_each_other(&[&a, &b]).await;
    let mut member = b.client("").await;
    member
        .send(json!({"type": "subscribe", "channel_ids": ["room"], "ref": 2}))
        .await;
    let reply = member.recv_until(|f| f["ref"] == 2).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    publish_and_receive(&a, &mut member, "room", 2).await;

    // Redis restarts: both nodes lose every subscription and every view.
    redis.restart().await;
    a.wait_ready().await;
    b.wait_ready().await;
    see_each_other(&[&a, &b]).await;
    // The member is still in the channel: once both nodes are ready again,
    // what A publishes reaches it.
    for n in 3..20 {
        publish_and_receive(&a, &mut member, "room", n).await;
    }
    // A join made after the restart is promised the same.
    let mut second = b.client("").await;
    second
        .send(json!({"type": "subscribe", "channel_ids": ["later"], "ref": 3}))
        .await;
    let reply = second.recv_until(|f| f["ref"] == 3).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    publish_and_receive(&a, &mut second, "later", 100).await;
}

/// A peer that does not speak interest (an older build, or this switch
/// off) never gets a known view: every node keeps relaying everything.
#[tokio::test]
async fn a_peer_without_interest_routing_keeps_every_publish_on_redis() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let url = redis.url();
    let a = Node::start(&["--redis-url", url.as_str(), "--relay-interest-routing"]).await;
    let b = Node::start(&[
        "--redis-url",
        url.as_str(),
        "--relay-interest-routing",
        "false",
    ])
    .await;
    see_each_other(&[&a, &b]).await;
    // A has heard B long enough to have had its view, were it offered.
    let beats = "pubmesh_relay_received_total{kind=\"heartbeat\"}";
    let from = a.metric(beats).await;
    eventually("heartbeats of B", patience(30), || async {
        (a.metric(beats).await >= from + 4.0).then_some(())
    })
    .await;
    let mut local = a.client("").await;
    local
        .send(json!({"type": "subscribe", "channel_ids": ["mixed"], "ref": 1}))
        .await;
    local.recv_until(|f| f["ref"] == 1).await;
    for n in 0..50 {
        let body = notify(&a, "mixed", n).await;
        assert_eq!(body["relay"], "sent", "{body}");
        assert_eq!(local.recv().await, json!({"n": n}));
    }
    assert_eq!(a.metric("pubmesh_relay_skipped_total").await, 0.0);
    assert_eq!(b.metric("pubmesh_relay_skipped_total").await, 0.0);
    assert_eq!(a.metric("pubmesh_relay_addressed_total").await, 0.0);
    // B ignores A's interest envelopes and A gets no acknowledgement from B,
    // yet joins on A are answered (B never skips, so it is not waited for).
    let mut second = a.client("").await;
    second
        .send(json!({"type": "subscribe", "channel_ids": ["mixed-2"], "ref": 2}))
        .await;
    let reply = second.recv_until(|f| f["ref"] == 2).await;
    assert_eq!(reply["type"], "subscribed", "{reply}");
}

/// Wait until `a` sends more envelopes to a peer's inbox than now.
async fn addressing(a: &Node) {
    let before = a.metric("pubmesh_relay_addressed_total").await;
    eventually("addressing", patience(30), || async {
        (a.metric("pubmesh_relay_addressed_total").await > before).then_some(())
    })
    .await;
}

/// A node's relay losses by reason, for a failure's message.
async fn dropped(node: &Node) -> String {
    node.metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("pubmesh_relay_dropped_total{") && !l.ends_with(" 0"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Redis channels `redis` has subscribers for.
async fn redis_channels(redis: &Redis) -> String {
    redis
        .cmd(&["PUBSUB", "CHANNELS", "*"])
        .await
        .unwrap_or_default()
}

/// A channel whose id names a node (the form nodes give a connection
/// without `channel_id`) goes to that node's inbox from every publisher;
/// the node neither subscribes to it in Redis nor waits for peers before
/// its connection frame. Members of such a channel on B, joined at connect
/// time while A publishes at full rate, get everything published after
/// their connection frame, in order and once; so do a member on C that
/// joins later and B's member meanwhile (each envelope then reaches both
/// inboxes, with one sequence number).
#[tokio::test]
async fn a_channel_named_for_b_goes_to_bs_inbox_and_stays_out_of_redis() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let (a, b, c) = three_fast_nodes(&redis).await;
    // A fresh channel of B names B and costs Redis no subscription.
    let mut own = b.client("").await;
    let home = own.channel_id();
    let suffix = format!(":{}", b.node_id);
    assert!(home.ends_with(&suffix), "{home}");
    let channels = redis_channels(&redis).await;
    assert!(
        channels.contains(&format!("pubmesh.n.{}", b.node_id)),
        "B's inbox: {channels}"
    );
    assert!(!channels.contains(&home), "{channels}");
    let body = notify(&a, &home, 1).await;
    assert_eq!(body["relayed"], true, "{body}");
    assert_eq!(own.recv().await, json!({"n": 1}));

    // A channel named for B, joined at connect time while A publishes.
    let named = format!("1730887348:{}{suffix}", uuid::Uuid::new_v4().simple());
    let to = json!({"type": "channel", "channel_ids": [named]});
    let publisher = Publisher::start_to(&a, to.clone()).await;
    // A sends to B's inbox though no one listens yet.
    addressing(&a).await;
    let query = format!("channel_id={named}");
    let mut on_b = b.client(&query).await;
    assert_eq!(on_b.channel_id(), named);
    let promised = publisher.started.load(Ordering::Acquire);
    everything_after(&mut on_b, &named, Vec::new(), promised, publisher).await;

    // A member on C joins while A publishes: C's answer promises what it
    // always does, and B's member keeps getting every message once.
    let publisher = Publisher::start_to(&a, to).await;
    let mut on_c = c.client("").await;
    let total = join_during_publishing(&mut on_c, &named, publisher).await;
    let mut on_b_got = Vec::new();
    while on_b_got.len() < total as usize {
        let Some(frame) = on_b.try_recv_within(patience(20)).await else {
            panic!(
                "B: {} of {total} received, the last {:?}; dropped on A: {}; on B: {}",
                on_b_got.len(),
                on_b_got.last(),
                dropped(&a).await,
                dropped(&b).await
            );
        };
        on_b_got.push(number(&frame));
    }
    assert_eq!(
        on_b_got,
        (0..total).collect::<Vec<u64>>(),
        "B: a gap or a copy"
    );
    on_b.expect_silence(Duration::from_millis(300)).await;
    let topic = format!("pubmesh.ch.{{{named}}}");
    let numsub = redis
        .cmd(&["PUBSUB", "NUMSUB", &topic])
        .await
        .unwrap_or_default();
    // The reply's last line is the count, as RESP (`:1`).
    assert_eq!(
        numsub.split_whitespace().last(),
        Some(":1"),
        "only C subscribes to {topic}: {numsub}"
    );
    // B publishes to its own channel: its member here, C through Redis.
    notify(&b, &named, 7).await;
    assert_eq!(on_b.recv().await, json!({"n": 7}));
    assert_eq!(on_c.recv().await, json!({"n": 7}));
}

/// With `--relay-owned-channels false` a fresh channel is subscribed in
/// Redis like any other, and still reaches its member.
#[tokio::test]
async fn without_owned_channels_a_fresh_channel_is_subscribed_in_redis() {
    let _slot = cluster_slot().await;
    let redis = Redis::start().await;
    let mut args = fast(&redis.url());
    args.extend(["--relay-owned-channels".to_string(), "false".to_string()]);
    let (a, b) = two_nodes(&strs(&args)).await;
    let mut own = b.client("").await;
    let home = own.channel_id();
    assert!(home.ends_with(&format!(":{}", b.node_id)), "{home}");
    let channels = redis_channels(&redis).await;
    assert!(channels.contains(&home), "{channels}");
    notify(&a, &home, 3).await;
    assert_eq!(own.recv().await, json!({"n": 3}));
}
