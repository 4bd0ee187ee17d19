//! Queueing to one connection's outbox: frames pushed (an overflow closes
//! it as a slow consumer), frames offered (dropped when it is behind: a
//! volatile emit), and live publications held back during a recovery.

use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::codec::{Frames, Recipient, Slot};
use crate::conn::{ChannelPos, Conn, Held};
use crate::delivery::{Delivery, Position};
use crate::outbox::Push;

use super::Hub;

impl Hub {
    /// Hold `delivery` back for a connection whose recovery is reading
    /// history; its cost is reserved in the outbox, so a backlog beyond
    /// `--outbox-bytes` closes the connection as a slow consumer (and drops
    /// what was held) like any other overflow.
    pub(super) fn hold(&self, conn: &Conn, held: &mut Held, delivery: &Delivery) {
        let cost = Held::cost(delivery);
        match conn.outbox.hold(cost) {
            Push::Queued => {
                held.deliveries.push(delivery.clone());
                held.bytes += cost;
                self.metrics.recovery_held_bytes.add(cost as i64);
            }
            Push::Overflowed => {
                self.overflowed();
                let dropped = std::mem::take(held);
                self.metrics.recovery_held_bytes.sub(dropped.bytes as i64);
            }
            Push::Closed => self.metrics.dropped.with_label_values(&["closed"]).inc(),
        }
    }

    /// End a recovery: give back the outbox bytes its held publications
    /// reserved and return them, in arrival order.
    pub fn end_recovery(&self, conn: &Conn, pos: &mut ChannelPos) -> Vec<Delivery> {
        let Some(held) = pos.recovering.take() else {
            return Vec::new();
        };
        conn.outbox.release(held.bytes);
        self.metrics.recovery_held_bytes.sub(held.bytes as i64);
        self.metrics.recoveries_in_progress.dec();
        held.deliveries
    }

    /// End `pos`'s recovery and encode what was held for it, minus what was
    /// already delivered. With `stop_at_gap`, a held publication past the
    /// next expected offset (one was lost on its way while they were held)
    /// stops there: it and the rest stay held, the recovery goes on, and
    /// the position to read history from is returned ([`Hub::repair`]).
    pub fn flush_held(
        &self,
        conn: &Conn,
        pos: &mut ChannelPos,
        frames: &mut Vec<Utf8Bytes>,
        stop_at_gap: bool,
    ) -> Option<Position> {
        let mut held = self.end_recovery(conn, pos).into_iter();
        while let Some(d) = held.next() {
            let Some(p) = &d.position else { continue };
            if stop_at_gap && pos.gap(&p.epoch, p.offset) {
                let from = Position {
                    offset: pos.last,
                    epoch: p.epoch.clone(),
                };
                self.begin_recovery(pos);
                if let Some(again) = &mut pos.recovering {
                    self.hold(conn, again, &d);
                    held.for_each(|d| self.hold(conn, again, &d));
                }
                return Some(from);
            }
            encode_past(conn, pos, &d, frames);
        }
        None
    }

    /// Start a recovery on `pos`: live publications wait from now on.
    pub fn begin_recovery(&self, pos: &mut ChannelPos) {
        if pos.recovering.is_none() {
            pos.recovering = Some(Held::default());
            self.metrics.recoveries_in_progress.inc();
        }
    }

    fn overflowed(&self) {
        self.metrics.slow_consumer_disconnects.inc();
        self.metrics
            .dropped
            .with_label_values(&["slow_consumer"])
            .inc();
    }

    /// Queue frames to one connection; false when it did not take them.
    /// The frames move into the outbox: a frame shared by many recipients
    /// costs each of them one reference count increment (in the encode
    /// cache) and one decrement (after the write), not two of each.
    pub fn push(&self, conn: &Conn, frames: Frames) -> bool {
        let mut queued = false;
        let sent = conn.codec.sent();
        let mut push =
            |frame: tokio_tungstenite::tungstenite::Utf8Bytes| match conn.outbox.push(frame) {
                Push::Queued => {
                    queued = true;
                    if let Some(sent) = sent {
                        sent.inc();
                    }
                }
                Push::Overflowed => self.overflowed(),
                Push::Closed => self.metrics.dropped.with_label_values(&["closed"]).inc(),
            };
        match frames {
            Frames::None => {}
            Frames::One(frame) => push(frame),
            Frames::Many(list) => list.into_iter().for_each(&mut push),
        }
        queued
    }

    /// Queue a delivery's frames that may be lost (a volatile emit): when
    /// the connection's outbox is behind they are dropped, counted as
    /// `pubmesh_dropped_total{reason="volatile"}`, and the connection
    /// stays. False when they were not queued.
    pub fn offer(&self, conn: &Conn, frames: Frames) -> bool {
        if matches!(frames, Frames::None) {
            return false;
        }
        if !conn.outbox.offer(frames.iter()) {
            self.metrics.dropped.with_label_values(&["volatile"]).inc();
            return false;
        }
        if let Some(sent) = conn.codec.sent() {
            sent.inc_by(frames.iter().count() as u64);
        }
        true
    }
}

/// Encode `d` for `conn` into `frames` (positioned: the enveloped form).
pub fn encode(conn: &Conn, d: &Delivery, positioned: bool, frames: &mut Vec<Utf8Bytes>) {
    // The connection's state is locked here: no `member_of`.
    let to = Recipient {
        client_id: &conn.client_id,
        positioned,
        tag: None,
        member_of: None,
    };
    let slot = conn.codec.slot(d, &to);
    if slot != Slot::Skip {
        frames.extend(conn.codec.encode(d, slot, &to).iter().cloned());
    }
}

/// Encode positioned `d` for `conn` when it comes after what `pos` last
/// delivered (and record it there); a copy, or one without a position,
/// adds nothing.
pub fn encode_past(conn: &Conn, pos: &mut ChannelPos, d: &Delivery, frames: &mut Vec<Utf8Bytes>) {
    if let Some(p) = &d.position {
        if pos.advance(&p.epoch, p.offset) {
            encode(conn, d, true, frames);
        }
    }
}
