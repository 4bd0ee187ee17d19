//! How a lane of the Redis relay groups a batch of envelopes into the
//! commands of one pipeline.

use std::collections::VecDeque;

use bytes::Bytes;
use pubmesh_cluster_proto as proto;

use super::queue::Outgoing;
use crate::hashing::HashMap;

/// One command of a pipeline: the envelopes it carries (indexes into the
/// lane's batch, in order, at `items` in [`Plan::members`]; `first` is the
/// first of them) and its payload.
pub(super) struct Command {
    pub(super) first: usize,
    items: std::ops::Range<usize>,
    pub(super) payload: Bytes,
}

/// A pipeline's commands, with the space that grouping takes kept across
/// pipelines, so a busy lane's plan allocates nothing but its payloads.
#[derive(Default)]
pub(super) struct Plan {
    pub(super) commands: Vec<Command>,
    /// Every command's envelopes, command after command.
    members: Vec<usize>,
    /// Per envelope of the batch, its command.
    command_of: Vec<usize>,
    /// Per command: its first envelope and its bytes in a batch.
    groups: Vec<(usize, usize)>,
    /// A topic's hash → the command its next envelope may join.
    open: HashMap<u64, usize>,
    /// Stream → the last command holding one of its envelopes.
    last: HashMap<u64, usize>,
    /// Per command, where its envelopes end in `members`.
    ends: Vec<usize>,
    parts: Vec<Bytes>,
}

impl Plan {
    pub(super) fn items(&self, command: &Command) -> &[usize] {
        &self.members[command.items.clone()]
    }
}

/// Group a lane's batch into commands (into `plan`, emptied first):
/// envelopes for the same topic share one batch envelope of at most
/// `max_bytes` (an envelope alone is sent as it is). Each topic's envelopes
/// stay in order, within and across its commands, and the commands follow
/// the first envelope of each. So do each stream's (`Outgoing::stream`):
/// an envelope joins its topic's command only if no envelope of its stream
/// went into a later command (a channel's envelope to a peer's inbox after
/// one to the channel's topic starts a command of its own). A command kept
/// whole (`Outgoing::whole`, sent again after an outage) is a command of its
/// own, and no envelope after it joins a command before it.
pub(super) fn plan_into(
    plan: &mut Plan,
    batch: &VecDeque<Outgoing>,
    max_bytes: usize,
    origin: &str,
) {
    plan.commands.clear();
    plan.members.clear();
    if batch.len() == 1 {
        // An idle lane's batch (the common case below saturation): sent as
        // it is, without grouping by topic.
        plan.members.push(0);
        plan.commands.push(Command {
            first: 0,
            items: 0..1,
            payload: batch[0].payload.clone(),
        });
        return;
    }
    let overhead = proto::batch_overhead(origin.len());
    let Plan {
        command_of,
        groups,
        open,
        last,
        ..
    } = plan;
    command_of.clear();
    groups.clear();
    open.clear();
    last.clear();
    // Sized for a stream per envelope (W2's channels each have their own).
    last.reserve(batch.len());
    for (i, item) in batch.iter().enumerate() {
        let size = item.payload.len() + proto::BATCH_ITEM_OVERHEAD;
        if item.whole {
            open.clear();
        } else {
            let topic = crate::hashing::process_hash(item.topic.as_str());
            let after = last.get(&item.stream).copied().unwrap_or(0);
            if let Some(&g) = open.get(&topic) {
                let (first, bytes) = &mut groups[g];
                // Two topics of one hash: the later starts a command.
                if batch[*first].topic == item.topic && g >= after && *bytes + size <= max_bytes {
                    *bytes += size;
                    command_of.push(g);
                    last.insert(item.stream, g);
                    continue;
                }
            }
            open.insert(topic, groups.len());
        }
        last.insert(item.stream, groups.len());
        command_of.push(groups.len());
        groups.push((i, overhead + size));
    }
    // Each command's envelopes in batch order, command after command:
    // `ends` counts each command's envelopes, then holds where each starts,
    // and once they are placed where each ends.
    let ends = &mut plan.ends;
    ends.clear();
    ends.resize(groups.len(), 0);
    for &g in command_of.iter() {
        ends[g] += 1;
    }
    let mut at = 0;
    for n in ends.iter_mut() {
        (*n, at) = (at, at + *n);
    }
    plan.members.resize(batch.len(), 0);
    for (i, &g) in command_of.iter().enumerate() {
        plan.members[ends[g]] = i;
        ends[g] += 1;
    }
    for (g, &(first, _)) in groups.iter().enumerate() {
        let items = if g == 0 { 0 } else { ends[g - 1] }..ends[g];
        let payload = if items.len() == 1 {
            batch[first].payload.clone()
        } else {
            plan.parts.clear();
            plan.parts.extend(
                plan.members[items.clone()]
                    .iter()
                    .map(|&i| batch[i].payload.clone()),
            );
            let payload = proto::encode_batch(origin, 0, &plan.parts);
            plan.parts.clear();
            payload
        };
        plan.commands.push(Command {
            first,
            items,
            payload,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::queue::stream_key;
    use super::super::queue::tests::envelope;
    use super::*;

    fn plan(batch: &VecDeque<Outgoing>, max_bytes: usize, origin: &str) -> Plan {
        let mut plan = Plan::default();
        plan_into(&mut plan, batch, max_bytes, origin);
        plan
    }

    /// (topic, seqs carried) of each command.
    fn shape(batch: &VecDeque<Outgoing>, plan: &Plan) -> Vec<(String, Vec<u64>)> {
        plan.commands
            .iter()
            .map(|c| {
                let decoded = proto::decode(&c.payload).expect("decodes");
                let seqs = match decoded.body {
                    proto::Body::Batch(parts) => parts.iter().map(|e| e.seq).collect(),
                    _ => vec![decoded.seq],
                };
                let topic = batch[c.first].topic.clone();
                assert_eq!(plan.items(c)[0], c.first);
                assert!(plan.items(c).iter().all(|&i| batch[i].topic == topic));
                (topic, seqs)
            })
            .collect()
    }

    #[test]
    fn envelopes_for_one_topic_share_a_command_in_order_within_the_byte_bound() {
        let batch: VecDeque<Outgoing> =
            [(1, "a"), (2, "b"), (3, "a"), (4, "c"), (5, "a"), (6, "b")]
                .into_iter()
                .map(|(seq, topic)| envelope(seq, topic))
                .collect();
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("a".to_string(), vec![1, 3, 5]),
                ("b".to_string(), vec![2, 6]),
                ("c".to_string(), vec![4]),
            ]
        );
        // An envelope alone is sent as it was encoded, not wrapped.
        assert_eq!(plan.commands[2].payload, batch[3].payload);
        // Within the bound: room for two envelopes of "a" per batch.
        let one = batch[0].payload.len() + proto::BATCH_ITEM_OVERHEAD;
        let bound = proto::batch_overhead(2) + 2 * one;
        let plan = self::plan(&batch, bound, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2, 6]),
                ("c".to_string(), vec![4]),
                ("a".to_string(), vec![5]),
            ]
        );
        assert!(plan.commands.iter().all(|c| c.payload.len() <= bound));
        // 0: every envelope alone, in queue order.
        let plan = self::plan(&batch, 0, "n1");
        let seqs: Vec<u64> = shape(&batch, &plan)
            .into_iter()
            .flat_map(|(_, s)| s)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_channels_envelopes_stay_in_order_when_they_change_redis_channel() {
        // "inbox" carries channels y and x to the one peer that listens;
        // x's second envelope went to its topic (two peers listened), its
        // third to the inbox again (one peer again).
        let mut batch: VecDeque<Outgoing> = VecDeque::new();
        for (seq, topic, stream) in [
            (1, "inbox", "y"),
            (2, "x", "x"),
            (3, "inbox", "x"),
            (4, "inbox", "y"),
        ] {
            let mut item = envelope(seq, topic);
            item.stream = stream_key(stream);
            batch.push_back(item);
        }
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(
            shape(&batch, &plan),
            [
                ("inbox".to_string(), vec![1]),
                ("x".to_string(), vec![2]),
                ("inbox".to_string(), vec![3, 4]),
            ]
        );
    }

    #[test]
    fn a_command_sent_again_goes_as_it_was_and_nothing_after_it_joins_one_before_it() {
        // One peer's inbox carried channels x and y in one command; y's
        // envelope 1 was queued before it was sent again, y's envelope 4
        // after.
        let inbox = |seq, stream| {
            let mut item = envelope(seq, "inbox");
            item.stream = stream_key(stream);
            item
        };
        let sent: VecDeque<Outgoing> = [inbox(2, "x"), inbox(3, "y")].into();
        let sent_plan = plan(&sent, 64 * 1024, "n1");
        assert_eq!(sent_plan.commands.len(), 1);
        let command = &sent_plan.commands[0];
        let copy = Outgoing::command_copy(&sent[command.first], command.payload.clone());
        assert!(copy.is_copy() && copy.whole);
        let batch: VecDeque<Outgoing> = [inbox(1, "y"), copy, inbox(4, "y")].into();
        let plan = plan(&batch, 64 * 1024, "n1");
        // Were 4 to join 1's command, it would reach the peer before 3.
        assert_eq!(
            shape(&batch, &plan),
            [
                ("inbox".to_string(), vec![1]),
                ("inbox".to_string(), vec![2, 3]),
                ("inbox".to_string(), vec![4]),
            ]
        );
        assert_eq!(plan.commands[1].payload, command.payload);
    }

    #[test]
    fn an_envelope_alone_in_its_batch_is_one_command_as_encoded() {
        let batch: VecDeque<Outgoing> = [envelope(7, "a")].into_iter().collect();
        let plan = plan(&batch, 64 * 1024, "n1");
        assert_eq!(shape(&batch, &plan), [("a".to_string(), vec![7])]);
        assert_eq!(plan.items(&plan.commands[0]), [0]);
        assert_eq!(plan.commands[0].payload, batch[0].payload);
    }
}
