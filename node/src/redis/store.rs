//! History and presence kept in Redis, for a cluster.
//!
//! Keys are `{prefix}.h.{CHANNEL}` (a stream: one entry per publication,
//! entry id `OFFSET-0`, fields `d` data and, when it has one, `e` event) and `{prefix}.hm.{CHANNEL}` (a hash: `e` epoch, `o`
//! last offset) for history, and `{prefix}.pr.{CHANNEL}` (a hash: client id →
//! entry JSON) with `{prefix}.pe.{CHANNEL}` (a sorted set: client id → expiry)
//! for presence, plus `{prefix}.pn.{NODE}` (a set of `CHANNEL\nCLIENT_ID`:
//! the entries a node made, so the survivors can remove them, and send
//! their `leave` events, when that node is declared gone), and
//! `{prefix}.ik.{CHANNEL}.SCOPED-KEY` (a string `OFFSET\nEPOCH`, expiring
//! after `--idempotency-window-seconds`: where a keyed publish was appended).
//! The braces around the channel are literal: they are a Redis
//! Cluster hash tag, so every key of a channel (and its pub/sub topic) lives
//! in the same slot and one Lua script can touch them all.
//!
//! Appending is one Lua script: check and set the idempotency key (if any),
//! bump the offset, add the stream entry, trim, refresh the TTLs, and
//! publish the positioned envelope on the channel's topic. Every node
//! therefore sees publications of a channel in offset order, and a retried
//! keyed publish (or a retried `EVAL`) never appends twice.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use fred::types::Value as RedisValue;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::delivery::BoxFuture;
use crate::history::{new_epoch, History, HistoryError, HistoryPage, Position, Publication};
use crate::policy::ChannelOptions;
use crate::presence::{Presence, PresenceEntry, PresenceError};

/// Appends one publication. KEYS: stream, meta, and for a keyed publish the
/// idempotency key. ARGV: data, max length, ttl seconds, fresh epoch, topic
/// ("" for none), publish command, envelope head, the key's lifetime in
/// seconds, the event name ("" for none; kept as the entry's `e` field).
/// Returns {offset, epoch, duplicate}: a key seen before returns
/// the position it got then (duplicate 1) and changes nothing; else the
/// key is set to this position in the same step. The published payload is
/// the envelope head followed by `OFFSET\nEPOCH\n`: a `Publication`
/// envelope (cluster-proto).
const APPEND: &str = r#"
if KEYS[3] then
  local seen = redis.call('get', KEYS[3])
  if seen then
    local nl = string.find(seen, '\n', 1, true)
    return {tonumber(string.sub(seen, 1, nl - 1)), string.sub(seen, nl + 1), 1}
  end
end
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 'o', 0)
end
local offset = redis.call('hincrby', KEYS[2], 'o', 1)
if ARGV[9] ~= '' then
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1], 'e', ARGV[9])
else
  redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 'd', ARGV[1])
end
redis.call('expire', KEYS[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[3])
if KEYS[3] then
  redis.call('set', KEYS[3], offset .. '\n' .. epoch, 'EX', ARGV[8])
end
if ARGV[5] ~= '' then
  redis.call(ARGV[6], ARGV[5], ARGV[7] .. offset .. '\n' .. epoch .. '\n')
end
return {offset, epoch, 0}
"#;

/// Takes a gone node's index of presence entries, once: KEYS: the index.
const TAKE_NODE: &str = r#"
local members = redis.call('smembers', KEYS[1])
redis.call('del', KEYS[1])
return members
"#;

/// Reads history. KEYS: stream, meta. ARGV: fresh epoch, ttl seconds, start
/// ("-" for the newest entries, else the first offset wanted), count.
/// Returns {top offset, epoch, entries}.
const READ: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('expire', KEYS[2], ARGV[2])
end
local top = tonumber(redis.call('hget', KEYS[2], 'o'))
local entries
if ARGV[3] == '-' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[4])
else
  entries = redis.call('xrange', KEYS[1], ARGV[3] .. '-0', '+', 'COUNT', ARGV[4])
end
return {top, epoch, entries}
"#;

/// Reads history without writing anything. KEYS: stream, meta. ARGV: start,
/// count (as for READ). Returns {} when the channel has no history, else
/// {top offset, epoch, entries}.
const PEEK: &str = r#"
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  return {}
end
local top = tonumber(redis.call('hget', KEYS[2], 'o'))
local entries
if ARGV[1] == '-' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[2])
else
  entries = redis.call('xrange', KEYS[1], ARGV[1] .. '-0', '+', 'COUNT', ARGV[2])
end
return {top, epoch, entries}
"#;

/// How the append script publishes (set by the relay that owns the topics).
pub struct PublishSpec {
    /// The Redis channel to publish on.
    pub topic: String,
    /// `PUBLISH` or `SPUBLISH`.
    pub command: &'static str,
    /// Bytes that precede `offset \n epoch` in the published payload.
    pub head: Vec<u8>,
}

/// Redis-backed history and presence.
pub struct RedisStore {
    /// One client per `--redis-url` (or one cluster client).
    clients: Vec<Client>,
    prefix: String,
    /// Presence entries not refreshed for this long expire.
    presence_ttl: Duration,
    /// How long an idempotency key of a history publish is kept.
    idempotency_window: Duration,
}

impl From<Error> for PresenceError {
    fn from(e: Error) -> Self {
        PresenceError(e.to_string())
    }
}

fn unavailable(e: Error) -> HistoryError {
    HistoryError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connect (in the background; commands fail fast while Redis is down).
    pub fn connect(
        urls: &[String],
        cluster: bool,
        tls_ca: Option<&std::path::Path>,
        prefix: &str,
        presence_ttl: Duration,
        idempotency_window: Duration,
    ) -> Result<Arc<Self>, String> {
        let mut clients = Vec::new();
        let urls: Vec<String> = if cluster {
            urls.iter().take(1).cloned().collect()
        } else {
            urls.to_vec()
        };
        for url in &urls {
            let config = crate::redis_connect::client_config(url, cluster, tls_ca)?;
            let client = Builder::from_config(config)
                .with_performance_config(|p| {
                    p.default_command_timeout = Duration::from_secs(2);
                })
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 2;
                })
                .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
                .build()
                .map_err(|e| format!("redis client for {url:?}: {e}"))?;
            crate::redis_connect::log_outages(&client, url, "history and presence", None);
            drop(client.connect());
            clients.push(client);
        }
        Ok(Arc::new(RedisStore {
            clients,
            prefix: prefix.to_string(),
            presence_ttl,
            idempotency_window,
        }))
    }

    /// The client that owns `channel` (the same choice as the relay's).
    fn client(&self, channel: &str) -> &Client {
        &self.clients[super::client::shard_index(channel, self.clients.len())]
    }

    /// `{prefix}.pn.{node}`: the presence entries a node made.
    fn node_index(&self, node: &str) -> String {
        format!("{}.pn.{node}", self.prefix)
    }

    fn key(&self, kind: &str, channel: &str) -> String {
        format!("{}.{}.{{{}}}", self.prefix, kind, channel)
    }

    async fn script<R: FromValue>(
        client: &Client,
        lua: &'static str,
        keys: Vec<String>,
        args: Vec<RedisValue>,
    ) -> Result<R, Error> {
        client.eval(lua, keys, args).await
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn parse_entries(value: RedisValue) -> Result<Vec<Publication>, HistoryError> {
    let bad = || HistoryError::Unavailable("unexpected history reply".into());
    let RedisValue::Array(entries) = value else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let RedisValue::Array(mut parts) = entry else {
            return Err(bad());
        };
        if parts.len() != 2 {
            return Err(bad());
        }
        let fields = parts.pop().ok_or_else(bad)?;
        let id = parts.pop().ok_or_else(bad)?;
        let id = id.as_string().ok_or_else(bad)?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(bad)?;
        let RedisValue::Array(fields) = fields else {
            return Err(bad());
        };
        let data = fields.get(1).and_then(|v| v.as_string()).ok_or_else(bad)?;
        let event = fields.get(3).and_then(|v| v.as_string());
        out.push(Publication {
            offset,
            data: Utf8Bytes::from(data),
            event: event.map(|e| std::sync::Arc::from(e.as_str())),
        });
    }
    Ok(out)
}

impl RedisStore {
    /// Append `data` to `channel` and, with a `spec`, publish the positioned
    /// envelope on the channel's topic in the same script. With a scoped
    /// idempotency `key`, a key already used on this channel appends and
    /// publishes nothing. Returns the position and whether the key was a
    /// duplicate.
    pub async fn append_publish(
        &self,
        channel: &str,
        data: &Utf8Bytes,
        options: &ChannelOptions,
        spec: Option<PublishSpec>,
        key: Option<&str>,
        event: Option<&str>,
    ) -> Result<(Position, bool), HistoryError> {
        let (topic, command, head) = match spec {
            Some(s) => (s.topic, s.command, s.head),
            None => (String::new(), "PUBLISH", Vec::new()),
        };
        let mut keys = vec![self.key("h", channel), self.key("hm", channel)];
        if let Some(key) = key {
            // `{prefix}.ik.{CHANNEL}.SCOPED-KEY`: in the channel's slot.
            keys.push(format!("{}.{key}", self.key("ik", channel)));
        }
        let args: Vec<RedisValue> = vec![
            data.as_str().into(),
            (options.history_size as i64).into(),
            (options.history_ttl_seconds as i64).into(),
            new_epoch().into(),
            topic.into(),
            command.into(),
            RedisValue::Bytes(head.into()),
            (self.idempotency_window.as_secs().max(1) as i64).into(),
            event.unwrap_or_default().into(),
        ];
        let reply: RedisValue = Self::script(self.client(channel), APPEND, keys, args)
            .await
            .map_err(unavailable)?;
        let RedisValue::Array(parts) = reply else {
            return Err(HistoryError::Unavailable("unexpected append reply".into()));
        };
        let offset = parts.first().and_then(|v| v.as_u64());
        let epoch = parts.get(1).and_then(|v| v.as_string());
        let duplicate = parts.get(2).and_then(|v| v.as_u64()) == Some(1);
        match (offset, epoch) {
            (Some(offset), Some(epoch)) => Ok((Position { offset, epoch }, duplicate)),
            _ => Err(HistoryError::Unavailable("unexpected append reply".into())),
        }
    }
}

impl History for RedisStore {
    fn append<'a>(
        &'a self,
        channel: &'a str,
        data: &'a Utf8Bytes,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<Position, HistoryError>> {
        Box::pin(async move {
            let (position, _) = self
                .append_publish(channel, data, options, None, None, None)
                .await?;
            Ok(position)
        })
    }

    fn read<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>> {
        Box::pin(self.read_page(channel, since, limit, Some(options)))
    }

    fn peek<'a>(
        &'a self,
        channel: &'a str,
        since: Option<&'a Position>,
        limit: usize,
        _options: &'a ChannelOptions,
    ) -> BoxFuture<'a, Result<HistoryPage, HistoryError>> {
        Box::pin(self.read_page(channel, since, limit, None))
    }
}

impl RedisStore {
    /// A history read: with `create` options, a channel without history gets
    /// an epoch (READ); without, nothing is written (PEEK).
    async fn read_page(
        &self,
        channel: &str,
        since: Option<&Position>,
        limit: usize,
        create: Option<&ChannelOptions>,
    ) -> Result<HistoryPage, HistoryError> {
        let (start, count) = match since {
            None => ("-".to_string(), limit.max(1)),
            Some(p) => ((p.offset + 1).to_string(), limit.saturating_add(1).max(1)),
        };
        let keys = vec![self.key("h", channel), self.key("hm", channel)];
        let (lua, args): (&'static str, Vec<RedisValue>) = match create {
            Some(options) => (
                READ,
                vec![
                    new_epoch().into(),
                    (options.history_ttl_seconds.max(1) as i64).into(),
                    start.into(),
                    (count as i64).into(),
                ],
            ),
            None => (PEEK, vec![start.into(), (count as i64).into()]),
        };
        let reply: RedisValue = Self::script(self.client(channel), lua, keys, args)
            .await
            .map_err(unavailable)?;
        let mut parts = match reply {
            RedisValue::Array(parts) => parts,
            // PEEK of a channel without history (an empty Lua table).
            RedisValue::Null => Vec::new(),
            _ => return Err(HistoryError::Unavailable("unexpected read reply".into())),
        };
        if parts.is_empty() && create.is_none() {
            return crate::history::page_from(
                std::iter::empty::<Publication>(),
                Position::none(),
                since,
                limit,
            );
        }
        if parts.len() != 3 {
            return Err(HistoryError::Unavailable("unexpected read reply".into()));
        }
        let entries = parse_entries(parts.pop().expect("3 parts"))?;
        let epoch = parts.pop().and_then(|v| v.as_string()).unwrap_or_default();
        let offset = parts.pop().and_then(|v| v.as_u64()).unwrap_or(0);
        let top = Position { offset, epoch };
        match since {
            None => {
                let mut publications = entries;
                publications.reverse();
                if limit == 0 {
                    publications.clear();
                }
                Ok(HistoryPage {
                    publications,
                    top,
                    recovered: true,
                })
            }
            Some(p) => {
                // The retained window as the generic selector expects it:
                // everything from the first entry after `p` to the top.
                let contiguous = entries
                    .first()
                    .map(|e| e.offset == p.offset + 1)
                    .unwrap_or(p.offset == top.offset);
                if p.epoch == top.epoch && p.offset <= top.offset && !contiguous {
                    return Ok(HistoryPage {
                        publications: Vec::new(),
                        top,
                        recovered: false,
                    });
                }
                crate::history::page_from(entries.into_iter(), top, Some(p), limit)
            }
        }
    }
}

impl Presence for RedisStore {
    fn join<'a>(
        &'a self,
        channel: &'a str,
        entry: &'a PresenceEntry,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        Box::pin(async move {
            let client = self.client(channel);
            let json = serde_json::to_string(entry).expect("entries serialize");
            let expires = (now_secs() + self.presence_ttl.as_secs()) as f64;
            let hash = self.key("pr", channel);
            let zset = self.key("pe", channel);
            let keep = (self.presence_ttl.as_secs() * 2) as i64;
            let pipeline = client.pipeline();
            let _: () = pipeline
                .hset(&hash, (entry.client_id.as_str(), json))
                .await?;
            let _: () = pipeline
                .zadd(
                    &zset,
                    None,
                    None,
                    false,
                    false,
                    (expires, entry.client_id.as_str()),
                )
                .await?;
            let _: () = pipeline.expire(&hash, keep, None).await?;
            let _: () = pipeline.expire(&zset, keep, None).await?;
            let _: Vec<RedisValue> = pipeline.all().await?;
            // The node's index of its entries, off the join's path (the
            // join event should not wait for it; a stale member is skipped).
            let index = self.node_index(&entry.node_id);
            let node_client = self.client(&entry.node_id).clone();
            let member = format!("{channel}\n{}", entry.client_id);
            tokio::spawn(async move {
                let pipeline = node_client.pipeline();
                let queued: Result<(), Error> = async {
                    pipeline.sadd::<(), _, _>(&index, member).await?;
                    pipeline.expire::<(), _>(&index, keep, None).await
                }
                .await;
                let done = match queued {
                    Ok(()) => pipeline.all::<Vec<RedisValue>>().await.map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = done {
                    tracing::debug!(error = %e, "presence node index update failed");
                }
            });
            Ok(())
        })
    }

    fn leave<'a>(
        &'a self,
        channel: &'a str,
        client_id: &'a str,
    ) -> BoxFuture<'a, Result<(), PresenceError>> {
        Box::pin(async move {
            let client = self.client(channel);
            let _: () = client.hdel(self.key("pr", channel), client_id).await?;
            let _: () = client.zrem(self.key("pe", channel), client_id).await?;
            if let Some(node) = pubmesh_cluster_proto::owner_node(client_id) {
                let _: () = self
                    .client(node)
                    .srem(self.node_index(node), format!("{channel}\n{client_id}"))
                    .await?;
            }
            Ok(())
        })
    }

    fn take_node<'a>(
        &'a self,
        node_id: &'a str,
    ) -> BoxFuture<'a, Result<Vec<(String, PresenceEntry)>, PresenceError>> {
        Box::pin(async move {
            let members: Vec<String> = self
                .client(node_id)
                .eval(
                    TAKE_NODE,
                    vec![self.node_index(node_id)],
                    Vec::<String>::new(),
                )
                .await?;
            let mut taken = Vec::new();
            for member in members {
                let Some((channel, client_id)) = member.split_once('\n') else {
                    continue;
                };
                let client = self.client(channel);
                let json: Option<String> = client.hget(self.key("pr", channel), client_id).await?;
                let _: () = client.hdel(self.key("pr", channel), client_id).await?;
                let _: () = client.zrem(self.key("pe", channel), client_id).await?;
                if let Some(entry) = json.and_then(|j| serde_json::from_str(&j).ok()) {
                    taken.push((channel.to_string(), entry));
                }
            }
            Ok(taken)
        })
    }

    fn list<'a>(
        &'a self,
        channel: &'a str,
    ) -> BoxFuture<'a, Result<Vec<PresenceEntry>, PresenceError>> {
        Box::pin(async move {
            let client = self.client(channel);
            let hash = self.key("pr", channel);
            let zset = self.key("pe", channel);
            let now = now_secs() as f64;
            let expired: Vec<String> = client
                .zrangebyscore(&zset, f64::NEG_INFINITY, now, false, None)
                .await?;
            if !expired.is_empty() {
                let _: () = client.hdel(&hash, expired.clone()).await?;
                let _: () = client.zrem(&zset, expired).await?;
            }
            let all: std::collections::HashMap<String, String> = client.hgetall(&hash).await?;
            let mut entries: Vec<PresenceEntry> = all
                .values()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect();
            entries.sort_by(|a, b| a.client_id.cmp(&b.client_id));
            Ok(entries)
        })
    }
}
