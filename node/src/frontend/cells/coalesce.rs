//! Coalescing of event bursts (docs/cells.md, "Coalescing"), as Cells'
//! node events batcher does: events of a kind with a configured key field
//! (`tree` and `meta`: `Target.Uuid`) are held per (key, audience) until
//! no event came for that key for `coalesce_idle`, or `coalesce_max_wait`
//! after the first one, then merged ([`merge_bodies`]) and published once.
//!
//! Merging happens on the node that receives `POST /api/events`, before
//! the event is relayed: a burst is merged once for the whole cluster.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus::IntCounterVec;
use serde_json::Value;

use super::events::Checked;
use super::wire::{self, EventType, NodeChangeEvent};
use crate::address::Bucket;
use crate::config::addresses::Rate;
use crate::config::cells::Cells as CellsConfig;
use crate::node::{Node, Published};

/// The outcomes of `pubmesh_cells_events_total`.
pub const OUTCOMES: &[&str] = &[
    "coalesced",
    "merged",
    "passed",
    "dropped_silent_rate",
    "dropped_session_rate",
    "dropped_expired",
];

/// One key's burst.
struct Pending {
    /// The first event (kind, audience, groups); its body is replaced by
    /// the merge.
    event: Checked,
    bodies: Vec<String>,
    first: Instant,
    last: Instant,
}

impl Pending {
    fn due(&self, idle: Duration, max_wait: Duration) -> Instant {
        (self.last + idle).min(self.first + max_wait)
    }
}

/// The bursts waiting on one node.
pub struct Coalescer {
    pending: Mutex<HashMap<String, Pending>>,
    idle: Duration,
    max_wait: Duration,
    /// `pubmesh_cells_events_total{outcome}`: events held for a burst
    /// (`coalesced`), merged events sent (`merged`), events sent at once
    /// (`passed`).
    counter: IntCounterVec,
    /// Events marked `Silent` this node publishes (`--cells-silent-rate`).
    silent: Option<(Rate, Mutex<Bucket>)>,
}

/// What became of an offered event.
pub enum Offer {
    /// Held; `pending` events of its burst wait so far.
    Held { key: String, pending: usize },
    /// To publish now, after `flushed` (the merged burst of its key, for
    /// a type Cells never batches: it must arrive before this one).
    Now {
        flushed: Option<Box<Checked>>,
        event: Box<Checked>,
    },
}

/// The coalescing key of an event: the configured field of its body, a
/// non-empty string or a number. `None`: the event is not coalesced.
pub fn key_of(config: &CellsConfig, kind: &str, body: &Value) -> Option<String> {
    let (_, path) = config.coalesce_keys.iter().find(|(k, _)| k == kind)?;
    let mut at = body;
    for part in path.split('.') {
        at = at.get(part)?;
    }
    match at {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether Cells sends this node event at once rather than batching it:
/// `DELETE`, `UPDATE_PATH` and `UPDATE_USER_META`.
fn unbatched(body: &Value) -> bool {
    let Some(t) = body.get("Type") else {
        return false;
    };
    matches!(
        serde_json::from_value::<EventType>(t.clone()),
        Ok(EventType::Delete | EventType::UpdatePath | EventType::UpdateUserMeta)
    )
}

/// Merge a burst's bodies: node events as Cells' batcher does
/// ([`wire::merge`]: any `CREATE` gives `CREATE`, `MetaStore` maps merged
/// with later values winning, the last type and fields otherwise); a burst
/// with a body that is not a node event gives its last body.
pub fn merge_bodies(bodies: &[String]) -> Option<String> {
    let events: Result<Vec<NodeChangeEvent>, _> =
        bodies.iter().map(|b| serde_json::from_str(b)).collect();
    match events {
        Ok(events) => {
            let merged = wire::merge(&events)?;
            Some(serde_json::to_string(&merged.event).expect("events serialize"))
        }
        Err(_) => bodies.last().cloned(),
    }
}

impl Coalescer {
    pub fn new(config: &CellsConfig, counter: IntCounterVec) -> Coalescer {
        for outcome in OUTCOMES {
            counter.with_label_values(&[outcome]);
        }
        Coalescer {
            pending: Mutex::new(HashMap::new()),
            idle: config.coalesce_idle,
            max_wait: config.coalesce_max_wait,
            counter,
            silent: config
                .silent_rate
                .map(|rate| (rate, Mutex::new(Bucket::full(rate, Instant::now())))),
        }
    }

    /// Publish `event`, unless it is marked `"Silent":true` and the node's
    /// silent bucket is empty (dropped and counted, as Cells' silent
    /// dropper does). `None`: dropped.
    pub async fn publish(&self, node: &Node, event: &Checked) -> Option<Published> {
        if let Some((rate, bucket)) = &self.silent {
            let silent = serde_json::from_str::<Value>(&event.body)
                .ok()
                .is_some_and(|b| b.get("Silent") == Some(&Value::Bool(true)));
            if silent && bucket.lock().take(*rate, Instant::now()).is_err() {
                self.counter
                    .with_label_values(&["dropped_silent_rate"])
                    .inc();
                return None;
            }
        }
        Some(node.publish_groups(event.delivery()).await)
    }

    /// Hold `event` in its key's burst, or hand it back to publish now.
    pub fn offer(self: &Arc<Self>, node: &Arc<Node>, event: Checked) -> Offer {
        let parsed: Option<Value> = serde_json::from_str(&event.body).ok();
        let key = parsed
            .as_ref()
            .and_then(|body| key_of(&node.config.cells, &event.kind, body));
        let Some(key) = key else {
            self.counter.with_label_values(&["passed"]).inc();
            return Offer::Now {
                flushed: None,
                event: Box::new(event),
            };
        };
        let bucket = format!(
            "{key}\n{}",
            String::from_utf8_lossy(&event.audience.encode())
        );
        if parsed.as_ref().is_some_and(unbatched) {
            self.counter.with_label_values(&["passed"]).inc();
            let flushed = self
                .pending
                .lock()
                .remove(&bucket)
                .and_then(|p| self.merged(p))
                .map(Box::new);
            return Offer::Now {
                flushed,
                event: Box::new(event),
            };
        }
        let now = Instant::now();
        let mut pending = self.pending.lock();
        self.counter.with_label_values(&["coalesced"]).inc();
        match pending.entry(bucket) {
            Entry::Occupied(mut e) => {
                let p = e.get_mut();
                p.bodies.push(event.body);
                p.last = now;
                Offer::Held {
                    key,
                    pending: p.bodies.len(),
                }
            }
            Entry::Vacant(v) => {
                let bucket = v.key().clone();
                let body = event.body.clone();
                v.insert(Pending {
                    event,
                    bodies: vec![body],
                    first: now,
                    last: now,
                });
                tokio::spawn(flush_when_due(
                    Arc::downgrade(node),
                    Arc::clone(self),
                    bucket,
                ));
                Offer::Held { key, pending: 1 }
            }
        }
    }

    /// The merged event of a burst.
    fn merged(&self, p: Pending) -> Option<Checked> {
        let body = merge_bodies(&p.bodies)?;
        self.counter.with_label_values(&["merged"]).inc();
        Some(Checked { body, ..p.event })
    }
}

/// Wait until a burst is due, then publish its merge.
async fn flush_when_due(node: Weak<Node>, coalescer: Arc<Coalescer>, bucket: String) {
    let ready = loop {
        let due = match coalescer.pending.lock().get(&bucket) {
            Some(p) => p.due(coalescer.idle, coalescer.max_wait),
            None => return,
        };
        tokio::time::sleep_until(due.into()).await;
        let mut pending = coalescer.pending.lock();
        let Some(p) = pending.get(&bucket) else {
            return;
        };
        if Instant::now() >= p.due(coalescer.idle, coalescer.max_wait) {
            break pending.remove(&bucket).expect("present");
        }
    };
    let (Some(node), Some(event)) = (node.upgrade(), coalescer.merged(ready)) else {
        return;
    };
    coalescer.publish(&node, &event).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keys: &[(&str, &str)]) -> CellsConfig {
        CellsConfig {
            coalesce_keys: keys
                .iter()
                .map(|(k, p)| (k.to_string(), p.to_string()))
                .collect(),
            ..CellsConfig::default()
        }
    }

    #[test]
    fn the_key_is_the_configured_field_of_the_kind() {
        let c = config(&[("tree", "Target.Uuid"), ("task", "JobID")]);
        let body = serde_json::json!({"Target": {"Uuid": "n1"}, "JobID": 7});
        assert_eq!(key_of(&c, "tree", &body).as_deref(), Some("n1"));
        assert_eq!(key_of(&c, "task", &body).as_deref(), Some("7"));
        // Kinds without a key, and bodies without the field, pass through.
        assert_eq!(key_of(&c, "meta", &body), None);
        let none = serde_json::json!({"Target": {"Uuid": ""}, "JobID": [1]});
        assert_eq!(key_of(&c, "tree", &none), None);
        assert_eq!(key_of(&c, "task", &none), None);
        assert_eq!(key_of(&c, "tree", &serde_json::json!({})), None);
        assert_eq!(
            CellsConfig::default().coalesce_keys,
            [
                ("tree".to_string(), "Target.Uuid".to_string()),
                ("meta".into(), "Target.Uuid".into())
            ]
        );
    }

    #[test]
    fn delete_path_and_user_meta_are_not_batched() {
        for (t, want) in [
            ("DELETE", true),
            ("UPDATE_PATH", true),
            ("UPDATE_USER_META", true),
            ("CREATE", false),
            ("UPDATE_META", false),
            ("UPDATE_CONTENT", false),
            ("NOPE", false),
        ] {
            assert_eq!(unbatched(&serde_json::json!({"Type": t})), want, "{t}");
        }
        assert!(unbatched(&serde_json::json!({"Type": 5})));
        assert!(!unbatched(&serde_json::json!({})));
    }

    #[test]
    fn bodies_merge_as_the_batcher_does() {
        let bodies = [
            r#"{"Type":"UPDATE_META","Target":{"Uuid":"n","Path":"a","MetaStore":{"x":"1","y":"1"}}}"#,
            r#"{"Target":{"Uuid":"n","MetaStore":{"y":"2"}},"extra":1}"#,
            r#"{"Type":"UPDATE_META","Target":{"Uuid":"n","Path":"b","MetaStore":{"z":"3"}},"extra":2}"#,
        ]
        .map(String::from);
        let merged: Value = serde_json::from_str(&merge_bodies(&bodies).unwrap()).unwrap();
        // A CREATE (the zero type, left out) among them: CREATE.
        assert_eq!(merged.get("Type"), None, "{merged}");
        assert_eq!(merged["Target"]["Path"], "a");
        assert_eq!(
            merged["Target"]["MetaStore"],
            serde_json::json!({"x": "1", "y": "2", "z": "3"})
        );
        assert_eq!(merged["extra"], 2);
        // No CREATE: the last type.
        let updates = [
            r#"{"Type":"UPDATE_META","Target":{"Uuid":"n"}}"#,
            r#"{"Type":"UPDATE_CONTENT","Target":{"Uuid":"n"}}"#,
        ]
        .map(String::from);
        let merged: Value = serde_json::from_str(&merge_bodies(&updates).unwrap()).unwrap();
        assert_eq!(merged["Type"], "UPDATE_CONTENT");
        // Bodies that are not node events: the last one.
        let other = [r#"{"Type":"custom"}"#, r#"{"Type":"other","n":2}"#].map(String::from);
        assert_eq!(merge_bodies(&other).unwrap(), other[1]);
        assert_eq!(merge_bodies(&[]), None);
    }
}
