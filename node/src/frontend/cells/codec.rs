//! The Cells gateway's codec: which sessions an event's audience entitles,
//! and the frames each one gets (one per matching workspace).
//!
//! An event travels as a [`Delivery`] addressed to the internal groups its
//! audience names (`cells.ws:…`, `cells.user:…`, `cells.role:…`,
//! `cells.profile:…`), so only nodes with members in them receive it and
//! only those members are asked. `data` is the event's body and `audience`
//! the [`Audience`] in a compact text form. Each recipient's codec then
//! checks the session's own claims (its [`Claims`] tag), so a session whose
//! claims changed since it joined its groups never gets more than they
//! entitle: `slot` is one hash lookup per audience workspace, and sessions
//! matching the same workspaces share one encoding.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::address::Bucket;
use crate::codec::{Codec, Frames, Recipient, Slot};
use crate::config::addresses::Rate;
use crate::delivery::Delivery;

/// What a subscribed session is entitled to, from its JWT claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claims {
    pub user: String,
    pub profile: String,
    pub roles: HashSet<String>,
    pub workspaces: HashSet<String>,
}

/// Who an event is for: sessions in any of `workspaces` (one frame per
/// matching workspace, carrying its id), else sessions whose user, one of
/// whose roles, or whose profile is named (one frame); never the session
/// whose user is `exclude_user`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audience {
    pub kind: String,
    pub workspaces: Vec<String>,
    pub users: Vec<String>,
    pub roles: Vec<String>,
    pub profile: Option<String>,
    pub exclude_user: Option<String>,
}

/// The audience as it travels in [`Delivery::audience`]: six lines (kind,
/// workspaces, users, roles, profile, excluded user), ids separated by tabs.
/// Ids never contain tabs or newlines (they are checked as channel names).
impl Audience {
    pub fn encode(&self) -> Bytes {
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.kind,
            self.workspaces.join("\t"),
            self.users.join("\t"),
            self.roles.join("\t"),
            self.profile.as_deref().unwrap_or(""),
            self.exclude_user.as_deref().unwrap_or("")
        );
        Bytes::from(text)
    }
}

/// A borrowed view of an encoded audience, read without allocating.
struct View<'a> {
    kind: &'a str,
    workspaces: &'a str,
    users: &'a str,
    roles: &'a str,
    profile: &'a str,
    exclude: &'a str,
}

fn ids(line: &str) -> impl Iterator<Item = &str> {
    line.split('\t').filter(|s| !s.is_empty())
}

impl<'a> View<'a> {
    fn read(bytes: &'a [u8]) -> Option<View<'a>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.splitn(6, '\n');
        Some(View {
            kind: lines.next()?,
            workspaces: lines.next()?,
            users: lines.next()?,
            roles: lines.next()?,
            profile: lines.next()?,
            exclude: lines.next()?,
        })
    }

    /// The audience workspaces `claims` has, by index.
    fn matching<'b>(&self, claims: &'b Claims) -> impl Iterator<Item = (usize, &'a str)> + 'b
    where
        'a: 'b,
    {
        ids(self.workspaces)
            .enumerate()
            .filter(move |(_, w)| claims.workspaces.contains(*w))
    }

    fn other_match(&self, claims: &Claims) -> bool {
        ids(self.users).any(|u| u == claims.user)
            || ids(self.roles).any(|r| claims.roles.contains(r))
            || (!self.profile.is_empty() && self.profile == claims.profile)
    }
}

/// Kinds whose Cells frames carry no `@type` (the client recognises them
/// by their fields).
const UNTYPED: &[&str] = &["tree", "meta", "task"];

/// One event frame: the body with `@type` (except for tree, meta and task
/// events) and, for a workspace match, `EventWorkspaceId` set; node events
/// (`Target`/`Source` objects) also get it in their `MetaStore`, JSON
/// encoded, where the Cells web client reads it.
pub fn event_frame(kind: &str, body: &str, workspace: Option<&str>) -> Utf8Bytes {
    let mut object: Map<String, Value> = match serde_json::from_str(body) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    if !UNTYPED.contains(&kind) {
        object.insert("@type".into(), Value::String(kind.to_string()));
    }
    if let Some(ws) = workspace {
        object.insert("EventWorkspaceId".into(), Value::String(ws.to_string()));
        let encoded = Value::String(serde_json::to_string(ws).expect("strings serialize"));
        for key in ["Target", "Source"] {
            if let Some(Value::Object(node)) = object.get_mut(key) {
                let meta = node
                    .entry("MetaStore")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(meta) = meta {
                    meta.insert("EventWorkspaceId".into(), encoded.clone());
                }
            }
        }
    }
    Utf8Bytes::from(serde_json::to_string(&object).expect("JSON serializes"))
}

/// A session's tag: its claims, and its event bucket (made full at the
/// first event; a refreshed JWT starts a new one).
pub struct Entitled {
    pub claims: Claims,
    /// The token's `exp` (seconds since the epoch): from then on the
    /// session receives nothing until it subscribes with a fresh token.
    pub expires_at: u64,
    bucket: parking_lot::Mutex<Option<Bucket>>,
}

/// The Cells codec; one instance for every `/ws/event` session.
pub struct CellsCodec {
    /// Events per session (`--cells-session-rate`), `None`: no limit.
    session_rate: Option<Rate>,
    /// `pubmesh_cells_events_total{outcome="dropped_session_rate"}`.
    dropped: prometheus::IntCounter,
    /// `pubmesh_cells_events_total{outcome="dropped_expired"}`.
    expired: prometheus::IntCounter,
    /// Frames handed out (`pubmesh_frontend_messages_out_total{frontend="cells"}`).
    out: prometheus::IntCounter,
    /// Sessions refused by the audience check after their group matched
    /// (claims changed meanwhile, or the excluded owner).
    refused: AtomicU64,
}

impl CellsCodec {
    pub fn new(
        out: prometheus::IntCounter,
        session_rate: Option<Rate>,
        dropped: prometheus::IntCounter,
        expired: prometheus::IntCounter,
    ) -> CellsCodec {
        CellsCodec {
            session_rate,
            dropped,
            expired,
            out,
            refused: AtomicU64::new(0),
        }
    }

    /// Recipients the audience check refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn skip(&self) -> Slot {
        self.refused.fetch_add(1, Ordering::Relaxed);
        Slot::Skip
    }
}

fn entitled<'a>(to: &'a Recipient<'_>) -> Option<&'a Entitled> {
    to.tag.and_then(|t| t.downcast_ref::<Entitled>())
}

impl CellsCodec {
    /// Take one event from the session's bucket; false (and counted) when
    /// it is empty: the event is dropped for this session, as Cells' rate
    /// limiter refuses it.
    fn admit(&self, session: &Entitled) -> bool {
        let Some(rate) = self.session_rate else {
            return true;
        };
        let now = Instant::now();
        let mut bucket = session.bucket.lock();
        let ok = bucket
            .get_or_insert_with(|| Bucket::full(rate, now))
            .take(rate, now)
            .is_ok();
        if !ok {
            self.dropped.inc();
        }
        ok
    }
}

impl Codec for CellsCodec {
    fn protocol(&self) -> &'static str {
        "cells"
    }

    /// `Shared(mask)`: bit `i` set for each matching audience workspace `i`
    /// (`Shared(0)`: matched by user, role or profile, one frame without a
    /// workspace); `Own` when a match lies beyond the 32nd workspace;
    /// `Skip` for anything but a Cells event, an unsubscribed session, the
    /// excluded owner, or claims that do not match.
    fn slot(&self, delivery: &Delivery, to: &Recipient<'_>) -> Slot {
        let Some(audience) = &delivery.audience else {
            return Slot::Skip;
        };
        let (Some(view), Some(session)) = (View::read(audience), entitled(to)) else {
            return Slot::Skip;
        };
        let claims = &session.claims;
        if !view.exclude.is_empty() && view.exclude == claims.user {
            return self.skip();
        }
        let mut mask = 0u32;
        let mut frames = 0u64;
        let mut own = false;
        for (i, _) in view.matching(claims) {
            if i >= 32 {
                own = true;
                frames = view.matching(claims).count() as u64;
                break;
            }
            mask |= 1 << i;
            frames += 1;
        }
        if frames == 0 && view.other_match(claims) {
            frames = 1;
        }
        if frames == 0 {
            return self.skip();
        }
        if session.expires_at <= unix_now() {
            self.expired.inc();
            return Slot::Skip;
        }
        if !self.admit(session) {
            return Slot::Skip;
        }
        self.out.inc_by(frames);
        if own {
            Slot::Own
        } else {
            Slot::Shared(mask)
        }
    }

    fn encode(&self, delivery: &Delivery, slot: Slot, to: &Recipient<'_>) -> Frames {
        let Some(view) = delivery.audience.as_deref().and_then(View::read) else {
            return Frames::None;
        };
        let body = delivery.data.as_str();
        let workspaces: Vec<&str> = match slot {
            Slot::Shared(0) => return Frames::One(event_frame(view.kind, body, None)),
            Slot::Shared(mask) => ids(view.workspaces)
                .enumerate()
                .filter(|(i, _)| *i < 32 && mask & (1 << i) != 0)
                .map(|(_, w)| w)
                .collect(),
            Slot::Own => match entitled(to) {
                Some(e) => view.matching(&e.claims).map(|(_, w)| w).collect(),
                None => return Frames::None,
            },
            Slot::Skip | Slot::Spliced(_) => return Frames::None,
        };
        let mut frames: Vec<Utf8Bytes> = workspaces
            .into_iter()
            .map(|w| event_frame(view.kind, body, Some(w)))
            .collect();
        match frames.len() {
            0 => Frames::None,
            1 => Frames::One(frames.pop().expect("one")),
            _ => Frames::Many(frames),
        }
    }
}

/// A tag for a session with these claims.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A session's tag, for claims from a token that expires at `expires_at`.
pub fn tag(claims: Claims, expires_at: u64) -> crate::codec::Tag {
    Arc::new(Entitled {
        claims,
        expires_at,
        bucket: parking_lot::Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::EncodeCache;
    use crate::delivery::Target;

    fn claims(user: &str, profile: &str, roles: &[&str], ws: &[&str]) -> crate::codec::Tag {
        tag(
            Claims {
                user: user.into(),
                profile: profile.into(),
                roles: roles.iter().map(|s| s.to_string()).collect(),
                workspaces: ws.iter().map(|s| s.to_string()).collect(),
            },
            u64::MAX,
        )
    }

    fn event(audience: Audience, body: &str) -> Delivery {
        let mut d = Delivery::new(Target::Channels(vec!["x".into()]), Utf8Bytes::from(body));
        d.audience = Some(audience.encode());
        d
    }

    fn frames(codec: &Arc<dyn Codec>, d: &Delivery, tag: &crate::codec::Tag) -> Vec<String> {
        let to = Recipient {
            client_id: "c",
            positioned: false,
            tag: Some(tag),
            member_of: None,
        };
        let mut cache = EncodeCache::default();
        match cache.frames(codec, d, &to) {
            None => Vec::new(),
            Some(f) => f.iter().map(|f| f.as_str().to_string()).collect(),
        }
    }

    #[test]
    fn one_frame_per_matching_workspace_and_none_for_the_owner() {
        let codec: Arc<dyn Codec> = Arc::new(CellsCodec::new(
            prometheus::IntCounter::new("x", "x").unwrap(),
            None,
            prometheus::IntCounter::new("y", "y").unwrap(),
            prometheus::IntCounter::new("z", "z").unwrap(),
        ));
        let d = event(
            Audience {
                kind: "tree".into(),
                workspaces: vec!["w1".into(), "w2".into(), "w3".into()],
                exclude_user: Some("bob".into()),
                ..Audience::default()
            },
            r#"{"Type":"UPDATE_PATH","Target":{"Uuid":"n1"}}"#,
        );
        let alice = claims("alice", "standard", &[], &["w1", "w3", "w9"]);
        let got = frames(&codec, &d, &alice);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains(r#""EventWorkspaceId":"w1""#), "{}", got[0]);
        assert!(
            got[0].contains(r#""MetaStore":{"EventWorkspaceId":"\"w1\""}"#),
            "{}",
            got[0]
        );
        assert!(!got[0].contains("@type"), "tree events are untyped");
        assert!(got[1].contains(r#""EventWorkspaceId":"w3""#));
        let bob = claims("bob", "standard", &[], &["w1"]);
        assert!(frames(&codec, &d, &bob).is_empty());
        let carol = claims("carol", "admin", &["r1"], &["w4"]);
        assert!(frames(&codec, &d, &carol).is_empty());
    }

    #[test]
    fn users_roles_and_profile_get_one_untargeted_frame() {
        let codec: Arc<dyn Codec> = Arc::new(CellsCodec::new(
            prometheus::IntCounter::new("x", "x").unwrap(),
            None,
            prometheus::IntCounter::new("y", "y").unwrap(),
            prometheus::IntCounter::new("z", "z").unwrap(),
        ));
        let d = event(
            Audience {
                kind: "idm".into(),
                users: vec!["dan".into()],
                roles: vec!["r1".into()],
                profile: Some("admin".into()),
                ..Audience::default()
            },
            r#"{"a":1}"#,
        );
        for who in [
            claims("dan", "standard", &[], &[]),
            claims("eve", "standard", &["r0", "r1"], &[]),
            claims("fay", "admin", &[], &["w1"]),
        ] {
            assert_eq!(
                frames(&codec, &d, &who),
                vec![r#"{"@type":"idm","a":1}"#.to_string()]
            );
        }
        assert!(frames(&codec, &d, &claims("gus", "standard", &["r2"], &["w1"])).is_empty());
        // Not a Cells event, or not subscribed: nothing.
        let plain = Delivery::new(Target::All, Utf8Bytes::from("{}"));
        assert!(frames(&codec, &plain, &claims("dan", "", &[], &[])).is_empty());
    }

    #[test]
    fn audiences_round_trip_through_their_text_form() {
        let a = Audience {
            kind: "task".into(),
            workspaces: vec!["w1".into(), "w 2".into()],
            users: vec![],
            roles: vec!["r".into()],
            profile: None,
            exclude_user: Some("me".into()),
        };
        let bytes = a.encode();
        let v = View::read(&bytes).expect("reads");
        assert_eq!(v.kind, "task");
        assert_eq!(ids(v.workspaces).collect::<Vec<_>>(), vec!["w1", "w 2"]);
        assert_eq!(ids(v.users).count(), 0);
        assert_eq!(v.profile, "");
        assert_eq!(v.exclude, "me");
    }
}
