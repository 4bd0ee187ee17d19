//! The local members of one name (a channel or a user), with a shared
//! snapshot of them for fan-outs.
//!
//! A publish to one channel used to copy the channel's member handles out
//! of the registry shard (one reference count increment per member, and a
//! decrement each after the fan-out) so that no lock is held while frames
//! are queued. The snapshot is that copy made once and shared by every
//! publish until the membership changes: a publish then costs one
//! increment, whatever the channel's size.

use std::ops::Deref;
use std::sync::Arc;

use crate::conn::Conn;
use crate::hashing::HashMap;

#[derive(Default)]
pub(super) struct Members {
    map: HashMap<u64, Arc<Conn>>,
    /// Every member, as of the last change; built on the first fan-out
    /// after a change, dropped by the change.
    snapshot: Option<Arc<[Arc<Conn>]>>,
}

impl Members {
    pub(super) fn one(conn: &Arc<Conn>) -> Self {
        let mut map = crate::hashing::map_with_capacity(1);
        map.insert(conn.id, conn.clone());
        Members {
            map,
            snapshot: None,
        }
    }

    pub(super) fn insert(&mut self, conn: &Arc<Conn>) {
        if self.map.insert(conn.id, conn.clone()).is_none() {
            self.snapshot = None;
        }
    }

    /// True when `id` was a member.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        let removed = self.map.remove(&id).is_some();
        if removed {
            self.snapshot = None;
            if self.map.capacity() > 16 && self.map.len() * 4 < self.map.capacity() {
                self.map.shrink_to_fit();
            }
        }
        removed
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&u64, &Arc<Conn>)> {
        self.map.iter()
    }

    /// Every member, shared: built once per change of membership.
    pub(super) fn shared(&mut self) -> Recipients {
        let snapshot = self
            .snapshot
            .get_or_insert_with(|| self.map.values().cloned().collect());
        Recipients::Shared(snapshot.clone())
    }
}

/// The recipients of one delivery: a channel's shared member snapshot, or
/// a list made for this delivery.
pub enum Recipients {
    Shared(Arc<[Arc<Conn>]>),
    Owned(Vec<Arc<Conn>>),
}

impl Deref for Recipients {
    type Target = [Arc<Conn>];

    fn deref(&self) -> &[Arc<Conn>] {
        match self {
            Recipients::Shared(s) => s,
            Recipients::Owned(v) => v,
        }
    }
}
