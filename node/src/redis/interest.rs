//! Subscriptions of the Redis relay: what local members need, coalesced
//! and applied to each server.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;

use crate::hashing::{HashMap, HashSet};

use super::state::{Inner, LINGER};

/// Keep each server's subscriptions equal to what local members need.
///
/// Wishes are coalesced per topic ([`Wishes`]) and applied in batches, at most
/// `--relay-interest-rate` topic changes per second (adds first; removals can
/// wait, an extra subscription only costs a little traffic). After a
/// reconnect every needed topic is subscribed again at once, outside that
/// bound, and only then does the server count as synced.
///
/// The work of one pass is proportional to the topics it changes, not to
/// all the node's subscriptions nor to the changes still waiting for the
/// rate: each server keeps the topics to add and the topics to remove apart
/// ([`Server`]), and a pass takes from them only what its budget allows;
/// topics lingering after their last member left wait in a queue in the
/// order they expire ([`Lingering`]), so a pass looks only at those that
/// are due.
///
/// One round trip to Redis per pass: the `PING` after the additions confirms
/// them; the removals queued next are not waited for (nothing waits for a
/// removal, and the next pass's `PING` on the same connection comes after
/// them anyway). Then one `Interest` envelope announces the pass's
/// additions and removals together, and the joins waiting for the pass are
/// answered.
///
/// A busy task (its last pass changed subscriptions) starts its next pass no
/// sooner than `--relay-interest-us` after the last one started ([`pace`]),
/// so under a stream of joins each `SUBSCRIBE` and `PING` carries the joins
/// of that interval instead of one or two; an idle task starts at once, so
/// a lone join waits no longer.
pub(super) async fn interest_loop(inner: Arc<Inner>) {
    let n = inner.servers.len();
    // Every server starts as lost: its first connection subscribes
    // everything at once and marks it synced.
    let mut state: Vec<Server> = (0..n)
        .map(|_| Server {
            lost: true,
            ..Server::default()
        })
        .collect();
    let mut lingering: Vec<Lingering> = (0..n).map(|_| Lingering::default()).collect();
    // Topics every node always listens to: its inbox (on every server, as
    // the readiness canary's return path), broadcast and control.
    for server in state.iter_mut() {
        server.permanent.insert(inner.topics.node(&inner.node_id));
    }
    state[0].permanent.insert(inner.topics.all());
    state[0].permanent.insert(inner.topics.control());
    for server in state.iter_mut() {
        for topic in server.permanent.clone() {
            server.want(topic);
        }
    }
    let rate = f64::from(inner.limits.interest_rate);
    // Token bucket of topic changes: one second's worth of burst.
    let mut tokens = rate;
    let mut refilled = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the last pass that changed subscriptions started.
    let mut busy_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = inner.wished.notified() => {}
            _ = tick.tick() => {}
        }
        if let Some(started) = busy_since.take() {
            pace(started, inner.limits.interest_wait).await;
        }
        let started = tokio::time::Instant::now();
        let now = Instant::now();
        tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate);
        refilled = now;
        let (upto, wishes) = {
            let mut wishes = inner.wishes.lock();
            (wishes.requested, std::mem::take(&mut wishes.pending))
        };
        for ((s, topic), wanted) in wishes {
            let server = &mut state[s];
            if wanted {
                lingering[s].cancel(&topic);
                server.want(topic);
            } else if !server.permanent.contains(&topic) && server.desired.contains(&topic) {
                lingering[s].start(topic, now + LINGER);
            }
        }
        for (s, linger) in lingering.iter_mut().enumerate() {
            linger.expire(now, |topic| state[s].unwant(topic));
        }
        // Topics Redis confirmed in this pass: announced to peers below.
        let mut added: Vec<String> = Vec::new();
        for (s, st) in state.iter_mut().enumerate() {
            let server = &inner.servers[s];
            if !server.subscriber.is_connected() {
                if !st.lost {
                    tracing::info!(server = %server.url, "subscriber connection lost");
                    if s == 0 {
                        // Deaf to `{p}.ctl`: peers' interest may change unheard.
                        inner.interest_deaf(false);
                    }
                }
                st.lost = true;
                server.health.set_synced(false);
                st.forget_confirmed();
                continue;
            }
            if st.lost {
                // (Re)connected: take the hub's own view of local members too.
                if let Some(node) = inner.node.get() {
                    let (channels, users) = node.interest_now();
                    let channels = channels
                        .into_iter()
                        .map(|c| (inner.server_for(&c), inner.topics.channel(&c)));
                    let users = users
                        .into_iter()
                        .map(|u| (inner.server_for(&u), inner.topics.user(&u)));
                    for (owner, topic) in channels.chain(users) {
                        if owner == s && !st.desired.contains(&topic) {
                            st.want(topic);
                        }
                    }
                }
                let add: Vec<String> = st.desired.difference(&st.confirmed).cloned().collect();
                let mut ok = true;
                for chunk in groups(&add, inner.sharded) {
                    if subscribe(&inner, s, &chunk, true).await {
                        added.extend(chunk.iter().filter(|t| !st.permanent.contains(*t)).cloned());
                        st.subscribed(&chunk);
                        inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    } else {
                        ok = false;
                        break;
                    }
                }
                if ok {
                    if st.confirmed.len() > st.permanent.len() {
                        inner.metrics.relay_resubscribes.inc();
                    }
                    tracing::info!(server = %server.url, topics = add.len(), "subscriptions in place");
                    st.lost = false;
                    server.health.set_synced(true);
                    if s == 0 {
                        inner.interest_listening();
                    }
                    // Tell peers at once (a held-back publish may wait for it).
                    inner.heartbeat_now();
                }
                continue;
            }
            let add = st.additions(tokens.floor() as usize);
            if !add.is_empty() {
                busy_since = Some(started);
            }
            for chunk in groups(&add, inner.sharded) {
                if subscribe(&inner, s, &chunk, true).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    added.extend(chunk.iter().filter(|t| !st.permanent.contains(*t)).cloned());
                    st.subscribed(&chunk);
                } else {
                    break;
                }
            }
        }
        // Every subscription taken above is in place on every reachable
        // server (a lost server resubscribes everything when it is back):
        // the joins waiting for them are answered before the removals run.
        // A server whose connection is down counts as done: the node is not
        // ready, serves its local members only, and every needed topic is
        // subscribed again when the connection is back.
        // A lost server's wanted topics count as listened to: peers keep
        // relaying them, so they arrive as soon as it is back.
        for st in state.iter().filter(|s| s.lost && inner.interests.enabled) {
            added.extend(st.desired.difference(&st.permanent).cloned());
        }
        // Removals are queued before the pass's announcement, so one
        // `Interest` envelope carries every change of the pass (a topic
        // cannot be both: removals need it unwanted, additions wanted, and a
        // lost server has no removals). Announcing a removal before its
        // `UNSUBSCRIBE` runs is safe: no local member needs the topic, and a
        // join of it later is a new addition of a later pass.
        let mut removed: Vec<String> = Vec::new();
        for (s, st) in state.iter_mut().enumerate() {
            if st.lost || !inner.servers[s].subscriber.is_connected() {
                continue;
            }
            let remove = st.removals(tokens.floor() as usize);
            if !remove.is_empty() {
                busy_since = Some(started);
            }
            for chunk in groups(&remove, inner.sharded) {
                if unsubscribe(&inner, s, &chunk).await {
                    tokens -= chunk.len() as f64;
                    inner.metrics.relay_interest_ops.inc_by(chunk.len() as u64);
                    st.unsubscribed(&chunk);
                    removed.extend(chunk);
                }
            }
        }
        // Peers learn of the new topics before any join waiting for them
        // is answered (the join then waits for their acknowledgements).
        inner.announce(added, removed);
        // Wakes exactly the joins waiting for a change up to `upto`.
        if state.iter().all(|s| s.lost || !s.missing_any()) && inner.applied.raise(upto) {
            inner.wishes.lock().adds.retain(|_, t| *t > upto);
        }
        let pending: usize = state
            .iter()
            .filter(|s| !s.lost)
            .map(|s| s.to_add.len() + s.to_remove.len())
            .sum();
        inner.metrics.relay_interest_pending.set(pending as i64);
        let total: usize = state.iter().map(|s| s.confirmed.len()).sum();
        inner.metrics.relay_subscriptions.set(total as i64);
    }
}

/// The interest of one Redis server, as the interest task sees it.
#[derive(Default)]
struct Server {
    /// Topics local members need (plus the permanent ones).
    desired: HashSet<String>,
    /// Topics Redis confirmed.
    confirmed: HashSet<String>,
    /// Desired and not confirmed: the next additions.
    to_add: HashSet<String>,
    /// Confirmed and no longer desired: the next removals. With
    /// `--relay-interest-rate` reached it holds a backlog, which a pass
    /// takes from without looking at the rest.
    to_remove: HashSet<String>,
    /// Topics never given up.
    permanent: HashSet<String>,
    /// The connection dropped (or never came up): everything is
    /// resubscribed when it is back.
    lost: bool,
}

impl Server {
    // The sets keep `to_add` = desired − confirmed and `to_remove` =
    // confirmed − desired through every change below.

    fn want(&mut self, topic: String) {
        // A removal called off leaves nothing to do; otherwise the topic
        // is not confirmed (it would have been pending removal).
        if self.desired.insert(topic.clone())
            && !self.to_remove.remove(&topic)
            && !self.confirmed.contains(&topic)
        {
            self.to_add.insert(topic);
        }
    }

    fn unwant(&mut self, topic: &str) {
        // An addition called off leaves nothing to do; otherwise the topic
        // is confirmed and goes.
        if self.desired.remove(topic)
            && !self.to_add.remove(topic)
            && self.confirmed.contains(topic)
        {
            self.to_remove.insert(topic.to_string());
        }
    }

    /// Redis confirmed these subscriptions.
    fn subscribed(&mut self, topics: &[String]) {
        for topic in topics {
            self.to_add.remove(topic);
            if !self.desired.contains(topic) {
                self.to_remove.insert(topic.clone());
            }
            self.confirmed.insert(topic.clone());
        }
    }

    /// These subscriptions were given up at Redis.
    fn unsubscribed(&mut self, topics: &[String]) {
        for topic in topics {
            self.to_remove.remove(topic);
            if self.desired.contains(topic) {
                self.to_add.insert(topic.clone());
            }
            self.confirmed.remove(topic);
        }
    }

    /// The connection is gone, and its subscriptions with it: everything
    /// desired is to be added again, nothing to be removed.
    fn forget_confirmed(&mut self) {
        self.confirmed.clear();
        self.to_remove.clear();
        self.to_add.clone_from(&self.desired);
    }

    /// Up to `budget` topics wanted but not confirmed.
    fn additions(&self, budget: usize) -> Vec<String> {
        self.to_add.iter().take(budget).cloned().collect()
    }

    /// Up to `budget` topics confirmed but no longer wanted.
    fn removals(&self, budget: usize) -> Vec<String> {
        self.to_remove.iter().take(budget).cloned().collect()
    }

    /// Up to `budget` topic changes, adds first.
    #[cfg(test)]
    fn changes(&self, budget: usize) -> (Vec<String>, Vec<String>) {
        let add = self.additions(budget);
        let remove = self.removals(budget - add.len());
        (add, remove)
    }

    /// Whether a wanted topic is not yet confirmed.
    fn missing_any(&self) -> bool {
        !self.to_add.is_empty()
    }
}

/// Topics of one server whose last local member left, each until its
/// linger ends. Every topic lingers equally long, so the queue is in the
/// order they expire; a topic wanted again is only forgotten in the map
/// (its queue entry is skipped when it comes up).
#[derive(Default)]
struct Lingering {
    /// Topic → when it is given up.
    until: HashMap<String, Instant>,
    /// (when, topic), oldest first; may name topics no longer lingering.
    queue: VecDeque<(Instant, String)>,
}

impl Lingering {
    fn start(&mut self, topic: String, until: Instant) {
        self.queue.push_back((until, topic.clone()));
        self.until.insert(topic, until);
    }

    fn cancel(&mut self, topic: &str) {
        self.until.remove(topic);
    }

    /// Give up (`unwant`) every topic whose linger ended by `now`.
    fn expire(&mut self, now: Instant, mut unwant: impl FnMut(&str)) {
        while let Some((at, _)) = self.queue.front() {
            if *at > now {
                break;
            }
            let (at, topic) = self.queue.pop_front().expect("front exists");
            // Only if it still lingers from this very start.
            if self.until.get(&topic) == Some(&at) {
                self.until.remove(&topic);
                unwant(&topic);
            }
        }
        if self.queue.capacity() > 1024 && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to_fit();
        }
    }
}

/// Subscribe one batch on server `s`; true when Redis confirmed it.
///
/// The client library answers `SUBSCRIBE` and `UNSUBSCRIBE` as soon as it
/// queues them, before they are even written (their replies arrive out of
/// band); only `SSUBSCRIBE` waits for Redis. So a plain subscribe is
/// followed by a `PING` on the same connection: Redis runs a connection's
/// commands in order, so its reply means the subscription is in place.
pub(super) async fn subscribe(inner: &Inner, s: usize, topics: &[String], add: bool) -> bool {
    if !add {
        return unsubscribe(inner, s, topics).await;
    }
    let subscriber = &inner.servers[s].subscriber;
    let topics = topics.to_vec();
    let result = if inner.sharded {
        subscriber.ssubscribe(topics).await
    } else {
        match subscriber.subscribe(topics).await {
            Ok(()) => subscriber.ping::<Value>(None).await.map(drop),
            other => other,
        }
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "subscription change failed; will retry");
    }
    result.is_ok()
}

/// Wait until `wait` after `started`, the start of the last pass that
/// changed subscriptions, so the joins arriving meanwhile share the next
/// pass's `SUBSCRIBE` and its round trip (`--relay-interest-us`). A pass
/// that took longer than `wait` is followed at once. The runtime's timer
/// counts in milliseconds: a wait under one millisecond is one pass of the
/// other ready tasks (those already woken add their wishes), never a spin.
async fn pace(started: tokio::time::Instant, wait: Duration) {
    let until = started + wait;
    if until <= tokio::time::Instant::now() {
        return;
    }
    if wait < Duration::from_millis(1) {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep_until(until).await;
    }
}

/// Unsubscribe one batch on server `s`; true once the command is queued on
/// the subscriber connection, without waiting for Redis: nothing waits for
/// a removal (a topic wanted again is subscribed, and confirmed, by a later
/// command on the same connection, which Redis runs after this one), and a
/// connection lost before it was written takes its subscriptions with it.
async fn unsubscribe(inner: &Inner, s: usize, topics: &[String]) -> bool {
    let subscriber = &inner.servers[s].subscriber;
    let topics = topics.to_vec();
    let result = if inner.sharded {
        subscriber.sunsubscribe(topics).await
    } else {
        subscriber.unsubscribe(topics).await
    };
    if let Err(e) = &result {
        tracing::debug!(error = %e, "unsubscribe failed; will retry");
    }
    result.is_ok()
}

/// Split topics into (un)subscribe batches: at most 1000 per command and,
/// for sharded pub/sub, one hash slot per command (Redis Cluster refuses
/// `SSUBSCRIBE` across slots).
pub(super) fn groups(topics: &[String], sharded: bool) -> Vec<Vec<String>> {
    if !sharded {
        return topics.chunks(1000).map(<[String]>::to_vec).collect();
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::default();
    for topic in topics {
        by_slot
            .entry(fred::util::redis_keyslot(topic.as_bytes()))
            .or_default()
            .push(topic.clone());
    }
    by_slot
        .into_values()
        .flat_map(|v| v.chunks(1000).map(<[String]>::to_vec).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{pace, Lingering, Server};

    fn topics(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    /// Every pending change, both sides: (to add, to remove), sorted.
    fn pending(s: &Server) -> (Vec<String>, Vec<String>) {
        let mut add: Vec<String> = s.to_add.iter().cloned().collect();
        let mut remove: Vec<String> = s.to_remove.iter().cloned().collect();
        add.sort();
        remove.sort();
        (add, remove)
    }

    #[test]
    fn only_changed_topics_are_looked_at_and_settled_ones_are_forgotten() {
        let mut s = Server::default();
        for t in ["a", "b", "c"] {
            s.want(t.to_string());
        }
        let (mut add, remove) = s.changes(10);
        add.sort();
        assert_eq!((add.clone(), remove), (topics(&["a", "b", "c"]), vec![]));
        assert!(s.missing_any());
        s.subscribed(&add);
        assert_eq!(pending(&s), (vec![], vec![]));
        assert!(!s.missing_any());
        // Wanting a topic again changes nothing; giving one up is a removal.
        s.want("a".to_string());
        assert_eq!(pending(&s), (vec![], vec![]));
        s.unwant("b");
        assert_eq!(s.changes(10), (vec![], topics(&["b"])));
        assert!(!s.missing_any(), "a pending removal is not a missing topic");
        // Adds come first within the budget.
        s.want("d".to_string());
        assert_eq!(s.changes(1), (topics(&["d"]), vec![]));
        // A topic wanted again before its removal runs is settled at once.
        s.want("b".to_string());
        assert_eq!(s.changes(10), (topics(&["d"]), vec![]));
        // Given up before Redis confirmed it: nothing to add any more.
        s.unwant("d");
        assert_eq!(pending(&s), (vec![], vec![]));
        // Removed at Redis: forgotten; wanted again later, added again.
        s.unwant("c");
        s.unsubscribed(&topics(&["c"]));
        assert_eq!(pending(&s), (vec![], vec![]));
        s.want("c".to_string());
        assert_eq!(pending(&s), (topics(&["c"]), vec![]));
    }

    #[test]
    fn a_pass_takes_what_its_budget_allows_from_a_backlog_of_removals() {
        let mut s = Server::default();
        let many: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        for t in &many {
            s.want(t.clone());
        }
        s.subscribed(&many);
        for t in &many {
            s.unwant(t);
        }
        assert_eq!(s.to_remove.len(), 10_000);
        // A pass under the rate takes its budget and leaves the rest
        // pending; one wanted topic comes first.
        s.want("new".to_string());
        assert_eq!(s.additions(100), topics(&["new"]));
        let first = s.removals(100);
        assert_eq!(first.len(), 100);
        s.unsubscribed(&first);
        assert_eq!(s.to_remove.len(), 9_900);
        assert!(first.iter().all(|t| !s.confirmed.contains(t)));
    }

    #[test]
    fn a_lost_connection_wants_everything_desired_again_and_removes_nothing() {
        let mut s = Server::default();
        for t in ["a", "b"] {
            s.want(t.to_string());
        }
        s.subscribed(&topics(&["a", "b"]));
        s.unwant("b");
        s.want("c".to_string());
        s.forget_confirmed();
        assert_eq!(pending(&s), (topics(&["a", "c"]), vec![]));
        assert!(s.missing_any());
    }

    #[test]
    fn a_lingering_topic_is_given_up_when_due_unless_wanted_again() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut l = Lingering::default();
        l.start("a".to_string(), at(100));
        l.start("b".to_string(), at(200));
        l.start("c".to_string(), at(300));
        // Wanted again: never given up, even though its entry is queued.
        l.cancel("b");
        let mut gone = Vec::new();
        l.expire(at(50), |t| gone.push(t.to_string()));
        assert!(gone.is_empty());
        l.expire(at(250), |t| gone.push(t.to_string()));
        assert_eq!(gone, ["a"]);
        // Left again later: it lingers from the new start only.
        l.start("b".to_string(), at(400));
        l.expire(at(350), |t| gone.push(t.to_string()));
        assert_eq!(gone, ["a", "c"]);
        l.expire(at(400), |t| gone.push(t.to_string()));
        assert_eq!(gone, ["a", "c", "b"]);
        assert!(l.until.is_empty() && l.queue.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_after_a_busy_one_waits_out_the_interval_and_no_longer() {
        let wait = Duration::from_millis(5);
        // Just after a busy pass started: the next one waits until the
        // interval since that start is over.
        let started = tokio::time::Instant::now();
        pace(started, wait).await;
        assert_eq!(tokio::time::Instant::now(), started + wait);
        // The busy pass took longer than the interval: no wait.
        let before = tokio::time::Instant::now();
        pace(before - Duration::from_millis(10), wait).await;
        assert_eq!(tokio::time::Instant::now(), before);
        // Turned off: no wait.
        pace(tokio::time::Instant::now(), Duration::ZERO).await;
        assert_eq!(tokio::time::Instant::now(), before);
        // Under a millisecond: one turn of the other tasks, no timer.
        pace(tokio::time::Instant::now(), Duration::from_micros(200)).await;
        assert_eq!(tokio::time::Instant::now(), before);
    }
}
