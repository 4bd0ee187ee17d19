//! Joining channels, with positions and recovery.
//!
//! A positioned join marks its channels as recovering before it joins them,
//! so the fan-out holds live publications back (against the connection's
//! outbox bound) while history is read. Every way a join can end puts that
//! state back: success delivers the reply, the missed publications and what
//! was held; any error, and a join dropped half-way (its connection closed),
//! undoes the join through [`Undo`]: channels it added are left, channels
//! the connection was already in get their previous delivery state back
//! and receive what was held for them.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{MeshError, Node};
use crate::codec::Frames;
use crate::conn::Conn;
use crate::delivery::{Delivery, Position, Target};
use crate::policy::{self, ChannelOptions, Claims};

/// A `join` request: channels, and whether deliveries on history channels
/// come with positions (`positioned`, or per channel when recovering `since`).
pub struct JoinRequest<'a> {
    pub channels: &'a [String],
    pub positioned: bool,
    pub since: &'a HashMap<String, Position>,
}

/// What a join did, for the front-end's acknowledgement.
pub struct Joined {
    pub channels: Vec<String>,
    /// For each positioned channel: its current position and, when the
    /// client asked to recover, whether everything it missed follows.
    pub positions: Vec<(String, Position, Option<bool>)>,
}

/// What one positioned channel missed, read from history.
struct Missed {
    channel: String,
    top: Position,
    publications: Vec<crate::history::Publication>,
    /// The client gave a position (`since`).
    asked: bool,
    /// It asked, and `publications` is everything after its position.
    recovered: bool,
}

impl Missed {
    /// Its publications, as positioned deliveries to its channel.
    fn deliveries(&self) -> impl Iterator<Item = Delivery> + '_ {
        self.publications.iter().map(|p| {
            let mut d = Delivery::new(Target::Channels(vec![self.channel.clone()]), p.data.clone());
            d.event = p.event.clone();
            d.position = Some(Position {
                offset: p.offset,
                epoch: self.top.epoch.clone(),
            });
            d
        })
    }
}

impl Node {
    /// Join channels. On history channels a positioned join gets deliveries
    /// with positions; with `since`, it first gets every publication it
    /// missed (or `recovered: false`). `reply` builds the front-end's
    /// acknowledgement, queued before the missed publications and before
    /// anything published meanwhile. An error changes nothing: the
    /// connection is in the channels it was in before, delivered as before.
    pub async fn join(
        &self,
        conn: &Arc<Conn>,
        request: JoinRequest<'_>,
        reply: impl FnOnce(&Joined) -> Option<Utf8Bytes>,
    ) -> Result<(), MeshError> {
        let JoinRequest {
            channels,
            positioned,
            since,
        } = request;
        let wants_position = |c: &String| positioned || since.contains_key(c);
        let mut options = Vec::with_capacity(channels.len());
        for c in channels {
            let o = self.may_subscribe(conn, c)?;
            if wants_position(c) && !o.history() {
                return Err(MeshError::NoHistory(c.clone()));
            }
            options.push(o);
        }
        let fresh: Vec<String> = channels
            .iter()
            .filter(|c| !conn.is_member(c))
            .cloned()
            .collect();
        self.may_churn(conn, &fresh.iter().map(String::as_str).collect::<Vec<_>>())?;
        // From here on, dropping `undo` (an error, or the join's future
        // dropped with its connection) puts everything back.
        let mut undo = Undo {
            node: self,
            conn,
            fresh,
            previous: Vec::new(),
            armed: true,
        };
        {
            // Before joining, so live publications are caught from the start.
            let mut state = conn.state.lock();
            for c in channels.iter().filter(|c| wants_position(c)) {
                let key: Arc<str> = Arc::from(c.as_str());
                let before = state
                    .positioned
                    .get(c.as_str())
                    .map(|p| (p.epoch.clone(), p.last));
                undo.previous.push((key.clone(), before));
                let pos = state.positioned.entry(key).or_default();
                if let Some(p) = since.get(c) {
                    pos.epoch = Some(Arc::from(p.epoch.as_str()));
                    pos.last = p.offset;
                }
                self.hub.begin_recovery(pos);
            }
        }
        let limit = self.config.max_channels_per_connection;
        let change = self
            .hub
            .subscribe(conn, channels, limit)
            .map_err(MeshError::TooManyChannels)?;
        conn.state
            .lock()
            .churn
            .record(undo.fresh.iter().map(String::as_str));
        // The join is answered (and history read) only once the broker sends
        // this node the new channels: a publish after the reply, or after the
        // history read, is never lost to a subscription still on its way.
        // Another join of the same channel may have started its
        // subscription: every channel is waited for, not only the new ones.
        self.interest(change);
        self.relay
            .interest_applied(channels, &[])
            .await
            .map_err(|e| MeshError::Unavailable(e.to_string()))?;

        // Read what each recovering channel missed (and the positions of the others).
        let mut positions = Vec::new();
        let mut missed = Vec::new();
        for (c, o) in channels.iter().zip(&options) {
            if !wants_position(c) {
                continue;
            }
            let from = since.get(c);
            let m = self.read_missed(c, from, o).await?;
            if from.is_some() {
                let result = if m.recovered { "ok" } else { "failed" };
                self.metrics.recoveries.with_label_values(&[result]).inc();
            }
            positions.push((c.clone(), m.top.clone(), from.map(|_| m.recovered)));
            missed.push(m);
        }
        let ack = reply(&Joined {
            channels: channels.to_vec(),
            positions,
        });

        // The reply, then the missed publications, then what arrived
        // meanwhile: all under the connection's lock so nothing slips between.
        // A publication lost while history was read is repaired after.
        let mut gaps = Vec::new();
        {
            let mut state = conn.state.lock();
            // The identity may have changed while history was read (a token
            // expiring): the join stands only if it is still allowed.
            let claims = Claims {
                authenticated: state.authenticated,
                channels: state.allowed_channels.as_deref(),
            };
            for (c, o) in channels.iter().zip(&options) {
                policy::may_subscribe(o, claims, c).map_err(MeshError::Forbidden)?;
            }
            let mut frames: Vec<Utf8Bytes> = ack.into_iter().collect();
            for m in missed {
                let Some(pos) = state.positioned.get_mut(m.channel.as_str()) else {
                    continue;
                };
                if !m.recovered {
                    // Nothing to replay: continue live from the current top.
                    // A position the client gave that history does not cover
                    // (ahead of the channel, or another epoch) is dropped.
                    if !m.asked && pos.epoch.as_deref() == Some(m.top.epoch.as_str()) {
                        pos.last = pos.last.max(m.top.offset);
                    } else {
                        pos.epoch = Some(Arc::from(m.top.epoch.as_str()));
                        pos.last = m.top.offset;
                    }
                }
                for d in m.deliveries() {
                    super::hub::encode_past(conn, pos, &d, &mut frames);
                }
                if let Some(from) = self.hub.flush_held(conn, pos, &mut frames, true) {
                    gaps.push((Arc::<str>::from(m.channel.as_str()), from));
                }
            }
            undo.armed = false;
            self.hub.push(conn, Frames::Many(frames));
        }
        for (channel, from) in gaps {
            self.hub
                .repair(&channel, &from.epoch, vec![(from.offset, conn.clone())]);
        }
        for (c, o) in channels.iter().zip(&options) {
            if undo.fresh.contains(c) && conn.is_member(c) {
                self.presence_join(conn, c, o).await;
            }
        }
        Ok(())
    }

    /// From now on, gaps in positioned subscriptions are filled from
    /// history ([`Node::repair`]); called once the node runs.
    pub fn repair_gaps(self: &Arc<Node>) {
        self.hub.repair_with(Arc::downgrade(self));
    }

    /// Fill a gap in the positioned subscriptions of `conns` to `channel`:
    /// a publication arrived past the one after `from`, the last each got,
    /// and the fan-out holds it (and what follows) as during a recovery.
    /// What history has after `from` is delivered, then what was held, each
    /// at most once and in offset order; one read serves them all. When
    /// history no longer covers `from`, or cannot be read, what was held
    /// follows the gap, which the client sees in the offsets.
    pub(super) async fn repair(
        self: Arc<Node>,
        conns: Vec<Arc<Conn>>,
        channel: Arc<str>,
        from: Position,
    ) {
        let options = self.config.namespaces.options(&channel);
        let read = self.read_missed(&channel, Some(&from), &options).await;
        let result = match &read {
            Ok(m) if m.recovered => "repaired",
            Ok(_) => "unrepaired",
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, "reading history to fill a gap failed");
                "unrepaired"
            }
        };
        self.metrics
            .recoveries
            .with_label_values(&[result])
            .inc_by(conns.len() as u64);
        let missed: Vec<Delivery> = match read {
            Ok(m) if m.recovered => m.deliveries().collect(),
            _ => Vec::new(),
        };
        let repaired = result == "repaired";
        for conn in conns {
            let again = {
                let mut state = conn.state.lock();
                // Left the channel meanwhile: its leave ended the recovery.
                let Some(pos) = state.positioned.get_mut(&*channel) else {
                    continue;
                };
                let mut frames = Vec::new();
                for d in &missed {
                    super::hub::encode_past(&conn, pos, d, &mut frames);
                }
                // Repaired: a gap among what was held is a new loss, read
                // again. Not: what was held follows the gap.
                let again = self.hub.flush_held(&conn, pos, &mut frames, repaired);
                self.hub.push(&conn, Frames::Many(frames));
                again
            };
            if let Some(from) = again {
                self.hub
                    .repair(&channel, &from.epoch, vec![(from.offset, conn.clone())]);
            }
        }
    }

    /// The position of a channel and, with `from`, what it missed since
    /// (`recovered: false` when history no longer covers it, or `from` is
    /// ahead of the channel).
    async fn read_missed(
        &self,
        channel: &str,
        from: Option<&Position>,
        options: &ChannelOptions,
    ) -> Result<Missed, MeshError> {
        self.metrics.history_reads.inc();
        let limit = options.history_size;
        let (top, publications, recovered) =
            match self.history.read(channel, from, limit, options).await {
                Ok(page) => (page.top, page.publications, page.recovered),
                Err(crate::history::HistoryError::BadPosition { .. }) if from.is_some() => {
                    // A position from the future: nothing can be trusted.
                    let top = self.history.read(channel, None, 0, options).await?.top;
                    (top, Vec::new(), false)
                }
                Err(e) => return Err(e.into()),
            };
        Ok(Missed {
            channel: channel.to_string(),
            top,
            publications,
            asked: from.is_some(),
            recovered: from.is_some() && recovered,
        })
    }
}

/// A positioned channel's delivery state: epoch and offset delivered last.
type Delivered = (Option<Arc<str>>, u64);

/// Puts a join back when it does not complete.
struct Undo<'a> {
    node: &'a Node,
    conn: &'a Arc<Conn>,
    /// Channels the join added (the connection was not in them).
    fresh: Vec<String>,
    /// Each positioned channel with its delivery state before the join
    /// (`None`: it was not positioned).
    previous: Vec<(Arc<str>, Option<Delivered>)>,
    armed: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (node, conn) = (self.node, self.conn);
        let change = node.hub.unsubscribe(conn, &self.fresh);
        node.interest(change);
        let mut frames = Vec::new();
        {
            let mut state = conn.state.lock();
            for (channel, before) in self.previous.drain(..) {
                let Some(mut pos) = state.positioned.remove(&channel) else {
                    continue;
                };
                let held = node.hub.end_recovery(conn, &mut pos);
                if !state.channels.contains(&channel) {
                    continue;
                }
                match before {
                    // Positioned before: its state back, then what was held
                    // after it.
                    Some((epoch, last)) => {
                        pos.epoch = epoch;
                        pos.last = last;
                        for d in held {
                            super::hub::encode_past(conn, &mut pos, &d, &mut frames);
                        }
                        state.positioned.insert(channel, pos);
                    }
                    // A plain member before: what was held, plain.
                    None => {
                        for d in held {
                            super::hub::encode(conn, &d, false, &mut frames);
                        }
                    }
                }
            }
            if !frames.is_empty() {
                node.hub.push(conn, Frames::Many(frames));
            }
        }
    }
}
