//! Scenario files (TOML): where to connect, how load arrives (the executor),
//! what the virtual users do (the workload), and the pass/fail thresholds.
//!
//! The format is documented in `loadtest/README.md`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::Protocol;
use crate::threshold::Threshold;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Node base URLs (`ws://host:port`); connections are spread over them.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// Server API key (for `via = "api"`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// HS256 secret the node verifies tokens with (for user subscribers).
    #[serde(default)]
    pub jwt_secret: Option<String>,
    /// Measured phase of a constant executor ("30s", "2m"); ramping
    /// executors take it from their stages.
    #[serde(default, with = "opt_duration_text")]
    pub duration: Option<Duration>,
    /// Publishing before the measured phase; those messages are marked and
    /// left out of every metric.
    #[serde(default = "default_warmup", with = "duration_text")]
    pub warmup: Duration,
    /// Time after the last publish to wait for in-flight deliveries.
    #[serde(default = "default_drain", with = "duration_text")]
    pub drain: Duration,
    /// Worker processes (each a segment of the load); 0 = decide from the
    /// number of connections.
    #[serde(default)]
    pub workers: u64,
    /// Spread client sockets over 127.0.0.1 … 127.0.0.N; 0 = decide from the
    /// number of connections.
    #[serde(default)]
    pub source_ips: u64,
    pub executor: Executor,
    #[serde(default)]
    pub subscribers: Option<Subscribers>,
    #[serde(default)]
    pub publish: Option<Publish>,
    #[serde(default)]
    pub chat: Option<Chat>,
    #[serde(default)]
    pub churn: Option<Churn>,
    #[serde(default)]
    pub connections: Option<Connections>,
    /// Metric name → thresholds, k6 syntax.
    #[serde(default)]
    pub thresholds: BTreeMap<String, Vec<ThresholdSpec>>,
}

fn default_urls() -> Vec<String> {
    vec!["ws://127.0.0.1:8000".into()]
}

fn default_warmup() -> Duration {
    Duration::from_secs(1)
}

fn default_drain() -> Duration {
    Duration::from_secs(2)
}

fn one() -> u64 {
    1
}

fn default_payload() -> usize {
    64
}

fn default_prefix() -> String {
    "bench".into()
}

/// A threshold as a string, or a table with `abortOnFail`.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(untagged)]
pub enum ThresholdSpec {
    Plain(String),
    Full {
        threshold: String,
        #[serde(rename = "abortOnFail", alias = "abort_on_fail", default)]
        abort_on_fail: bool,
    },
}

impl ThresholdSpec {
    pub fn parse(&self) -> Result<Threshold, crate::threshold::ThresholdError> {
        match self {
            ThresholdSpec::Plain(s) => Threshold::parse(s),
            ThresholdSpec::Full {
                threshold,
                abort_on_fail,
            } => {
                let mut t = Threshold::parse(threshold)?;
                t.abort_on_fail = *abort_on_fail;
                Ok(t)
            }
        }
    }
}

/// A stage of a ramping executor: reach `target` over `duration`.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(with = "duration_text")]
    pub duration: Duration,
    pub target: u64,
}

/// How load arrives (k6 executors).
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Executor {
    /// A fixed number of virtual users for the whole duration.
    ConstantVus { vus: u64 },
    /// Virtual users ramped through stages.
    RampingVus {
        #[serde(default, alias = "startVUs")]
        start_vus: u64,
        stages: Vec<Stage>,
    },
    /// A fixed number of iterations started per second.
    ConstantArrivalRate {
        rate: u64,
        /// Most iterations in flight at once; more are dropped.
        #[serde(default, alias = "maxVUs")]
        max_vus: Option<u64>,
    },
    /// Iterations per second ramped through stages.
    RampingArrivalRate {
        #[serde(default, alias = "startRate")]
        start_rate: u64,
        stages: Vec<Stage>,
        #[serde(default, alias = "maxVUs")]
        max_vus: Option<u64>,
    },
}

impl Executor {
    /// The target (VUs or iterations/s) at `t` into the measured phase.
    pub fn target_at(&self, t: Duration) -> f64 {
        match self {
            Executor::ConstantVus { vus } => *vus as f64,
            Executor::ConstantArrivalRate { rate, .. } => *rate as f64,
            Executor::RampingVus { start_vus, stages } => ramp(*start_vus, stages, t),
            Executor::RampingArrivalRate {
                start_rate, stages, ..
            } => ramp(*start_rate, stages, t),
        }
    }

    /// True for executors that start iterations at a rate.
    pub fn is_arrival_rate(&self) -> bool {
        matches!(
            self,
            Executor::ConstantArrivalRate { .. } | Executor::RampingArrivalRate { .. }
        )
    }

    /// The most iterations an arrival-rate executor keeps in flight.
    pub fn max_vus(&self) -> u64 {
        match self {
            Executor::ConstantArrivalRate { max_vus, .. }
            | Executor::RampingArrivalRate { max_vus, .. } => max_vus.unwrap_or(1000),
            _ => self.peak(),
        }
    }

    /// Total of the stages, for ramping executors.
    pub fn stages_duration(&self) -> Option<Duration> {
        match self {
            Executor::RampingVus { stages, .. } | Executor::RampingArrivalRate { stages, .. } => {
                Some(stages.iter().map(|s| s.duration).sum())
            }
            _ => None,
        }
    }

    /// The largest target over the run.
    pub fn peak(&self) -> u64 {
        match self {
            Executor::ConstantVus { vus } => *vus,
            Executor::ConstantArrivalRate { rate, .. } => *rate,
            Executor::RampingVus {
                start_vus: s,
                stages,
            }
            | Executor::RampingArrivalRate {
                start_rate: s,
                stages,
                ..
            } => stages
                .iter()
                .map(|st| st.target)
                .chain([*s])
                .max()
                .unwrap_or(0),
        }
    }

    /// Iterations an arrival-rate executor should start over `duration`.
    pub fn expected_iterations(&self, duration: Duration) -> f64 {
        if !self.is_arrival_rate() {
            return 0.0;
        }
        let step = Duration::from_millis(10);
        let mut total = 0.0;
        let mut t = Duration::ZERO;
        while t < duration {
            total += self.target_at(t) * step.as_secs_f64();
            t += step;
        }
        total
    }
}

fn ramp(start: u64, stages: &[Stage], t: Duration) -> f64 {
    let mut from = start as f64;
    let mut elapsed = Duration::ZERO;
    for stage in stages {
        if t < elapsed + stage.duration {
            let f = (t - elapsed).as_secs_f64() / stage.duration.as_secs_f64().max(1e-9);
            return from + (stage.target as f64 - from) * f;
        }
        elapsed += stage.duration;
        from = stage.target as f64;
    }
    from
}

/// How subscribers are placed in channels.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Assign {
    /// Subscriber `i` joins channels `i, i+1, …` (mod `channels`).
    #[default]
    Spread,
    /// Consecutive subscribers fill a channel before the next (chat rooms).
    Block,
}

/// The steady subscriber population; every delivery to it is measured.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Subscribers {
    pub count: u64,
    /// Distinct channels, named `{channel_prefix}-{n}`.
    #[serde(default = "one")]
    pub channels: u64,
    #[serde(default = "one")]
    pub channels_per_subscriber: u64,
    #[serde(default)]
    pub assign: Assign,
    #[serde(default = "default_prefix")]
    pub channel_prefix: String,
    /// When > 0, subscriber `i` authenticates (needs `jwt_secret`) as user
    /// `{channel_prefix}-u{i % users}` and joins no channel.
    #[serde(default)]
    pub users: u64,
    /// What subscribers speak: `native` (`/websocket`), `phoenix`,
    /// `socketio` or `cells` (see [`crate::protocol`]).
    #[serde(default)]
    pub protocol: Protocol,
    /// Phoenix: heartbeat period.
    #[serde(default = "default_heartbeat", with = "duration_text")]
    pub heartbeat: Duration,
    /// Socket.IO: Engine.IO revision, 4 (Socket.IO v5) or 3 (v4).
    #[serde(default = "default_eio")]
    pub eio: u8,
    /// Socket.IO: the event emitted (acked) to join each room; "" when the
    /// node puts sockets in their rooms itself.
    #[serde(default = "default_join_event")]
    pub join_event: String,
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(30)
}

fn default_eio() -> u8 {
    4
}

fn default_join_event() -> String {
    "join".into()
}

fn default_event() -> String {
    "bench".into()
}

impl Subscribers {
    /// The protocol options of these subscribers.
    pub fn protocol_options(&self) -> crate::protocol::Options {
        crate::protocol::Options {
            heartbeat: self.heartbeat,
            eio: self.eio,
            join_event: self.join_event.clone(),
        }
    }
}

/// What a publish targets.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    #[default]
    Channel,
    User,
    Client,
}

/// How publishers reach the node.
#[derive(Debug, Serialize, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Frames over dedicated publisher WebSockets.
    #[default]
    Ws,
    /// The server API (`POST /api/notify/...` with the API key).
    Api,
    /// A random subscriber posts to its own (first) channel over its socket.
    Member,
}

/// Publishing: one iteration is one publish.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    #[serde(default)]
    pub target: Target,
    #[serde(default)]
    pub via: Via,
    /// Publisher sockets for `via = "ws"` with an arrival-rate executor.
    #[serde(default = "one")]
    pub connections: u64,
    /// Bytes of padding in each payload.
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
    /// Pause after each iteration of a VU executor.
    #[serde(default, with = "duration_text")]
    pub think_time: Duration,
    /// The event name of API publishes to Phoenix and Socket.IO
    /// subscribers, or the event kind for Cells subscribers.
    #[serde(default = "default_event")]
    pub event: String,
}

/// Chat rooms: shorthand for block-assigned subscribers posting to their room.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub rooms: u64,
    pub members: u64,
    #[serde(default = "default_payload")]
    pub payload_bytes: usize,
}

/// Background connection churn next to the steady subscribers.
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Concurrent churning connections (each: connect, hold, close, repeat).
    pub connections: u64,
    /// Mean session length (each is 0.5x–1.5x of it).
    #[serde(default = "default_session", with = "duration_text")]
    pub session: Duration,
}

fn default_session() -> Duration {
    Duration::from_secs(5)
}

/// Connection-only workload (idle connections, connect rate): one iteration
/// is connect, read the connection frame, hold, close.
#[derive(Debug, Serialize, Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct Connections {
    /// How long a connection is held; absent = for the VU's whole life.
    #[serde(default, with = "opt_duration_text")]
    pub hold: Option<Duration>,
    /// When > 0, connection `i` joins `{channel_prefix}-{i % channels}`.
    #[serde(default)]
    pub channels: u64,
    #[serde(default = "default_prefix")]
    pub channel_prefix: String,
    /// With `channels` > 0: instead of `channel_id` in the URL, connection
    /// `i` sends a `subscribe` to its channel after the connection frame and
    /// waits for `subscribed` (`subscribe_ack`, `connect_subscribe`).
    #[serde(default)]
    pub subscribe: bool,
    /// Node process id: report its resident memory per connection.
    #[serde(default)]
    pub node_pid: Option<u32>,
}

/// The resolved workload.
pub enum Workload<'a> {
    PubSub {
        subscribers: &'a Subscribers,
        publish: &'a Publish,
        churn: Option<&'a Churn>,
    },
    Connections(&'a Connections),
}

/// Parse "250ms", "30s", "2m", "1h", "1m30s", or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(n) = text.parse::<f64>() {
        return Ok(Duration::from_secs_f64(n.max(0.0)));
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("bad duration {text:?}: missing unit"))?;
        let n: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("bad duration {text:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_end] {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("bad duration unit in {text:?}")),
        };
        total += n * mult;
        rest = &rest[unit_end..];
    }
    Ok(Duration::from_secs_f64(total))
}

fn format_duration(d: Duration) -> String {
    format!("{}us", d.as_micros())
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }
}

mod opt_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse_duration(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// The share `[start, end)` of `total` items that segment `index` of `of` runs
/// (k6 execution segments: contiguous, sizes differ by at most one).
pub fn split(total: u64, (index, of): (u64, u64)) -> Range<u64> {
    let of = of.max(1) as u128;
    let t = total as u128;
    let start = t * index as u128 / of;
    let end = t * (index as u128 + 1) / of;
    start as u64..end as u64
}

impl Scenario {
    /// Parse and check a scenario; `[chat]` is expanded into subscribers and
    /// publishing.
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let mut scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.normalize()?;
        Ok(scenario)
    }

    fn normalize(&mut self) -> Result<(), String> {
        if let Some(chat) = self.chat.clone() {
            if self.subscribers.is_some() {
                return Err("[chat] and [subscribers] cannot both be given".into());
            }
            self.subscribers = Some(Subscribers {
                count: chat.rooms * chat.members,
                channels: chat.rooms,
                channels_per_subscriber: 1,
                assign: Assign::Block,
                channel_prefix: "room".into(),
                users: 0,
                protocol: Protocol::Native,
                heartbeat: default_heartbeat(),
                eio: default_eio(),
                join_event: default_join_event(),
            });
            let publish = self.publish.get_or_insert(Publish {
                target: Target::Channel,
                via: Via::Member,
                connections: 1,
                payload_bytes: chat.payload_bytes,
                think_time: Duration::ZERO,
                event: default_event(),
            });
            publish.via = Via::Member;
            publish.target = Target::Channel;
        }
        self.validate()
    }

    /// Check the scenario for mistakes that would only show mid-run.
    pub fn validate(&self) -> Result<(), String> {
        for specs in self.thresholds.values() {
            for spec in specs {
                spec.parse().map_err(|e| e.to_string())?;
            }
        }
        if self.urls.is_empty() {
            return Err("urls must not be empty".into());
        }
        for url in &self.urls {
            crate::client::socket_addr(url).map_err(|e| e.to_string())?;
        }
        match (self.executor.stages_duration(), self.duration) {
            (Some(_), Some(_)) => {
                return Err("a ramping executor takes its duration from its stages".into())
            }
            (None, None) => return Err("duration is required for a constant executor".into()),
            (Some(d), None) if d.is_zero() => return Err("stages must not be empty".into()),
            _ => {}
        }
        let workload = self.workload()?;
        if let Workload::PubSub {
            subscribers,
            publish,
            ..
        } = workload
        {
            if subscribers.channels == 0 {
                return Err("subscribers.channels must be at least 1".into());
            }
            if subscribers.channels_per_subscriber > subscribers.channels {
                return Err("channels_per_subscriber exceeds channels".into());
            }
            if subscribers.users > 0 && self.jwt_secret.is_none() {
                return Err("user subscribers need jwt_secret".into());
            }
            if publish.target == Target::User && subscribers.users == 0 {
                return Err("target = \"user\" needs subscribers.users > 0".into());
            }
            if publish.via == Via::Member && publish.target != Target::Channel {
                return Err("via = \"member\" publishes to the member's channel".into());
            }
            if publish.via == Via::Member && subscribers.users > 0 {
                return Err("via = \"member\" needs channel subscribers".into());
            }
            if subscribers.protocol != Protocol::Native {
                if publish.via != Via::Api || publish.target != Target::Channel {
                    return Err(
                        "phoenix, socketio and cells subscribers are published to with via = \"api\", target = \"channel\"".into(),
                    );
                }
                if subscribers.users > 0 {
                    return Err("subscribers.users goes with protocol = \"native\"".into());
                }
                if self.churn.is_some() {
                    return Err("[churn] goes with protocol = \"native\"".into());
                }
            }
            if subscribers.protocol == Protocol::Socketio && !matches!(subscribers.eio, 3 | 4) {
                return Err("subscribers.eio is 3 or 4".into());
            }
            if subscribers.protocol == Protocol::Cells && self.jwt_secret.is_none() {
                return Err("cells subscribers need jwt_secret (their subscribe tokens)".into());
            }
        }
        Ok(())
    }

    /// What the virtual users do.
    pub fn workload(&self) -> Result<Workload<'_>, String> {
        match (&self.subscribers, &self.publish, &self.connections) {
            (Some(subscribers), Some(publish), None) => Ok(Workload::PubSub {
                subscribers,
                publish,
                churn: self.churn.as_ref(),
            }),
            (None, None, Some(c)) if self.churn.is_none() => Ok(Workload::Connections(c)),
            (None, None, Some(_)) => Err("[churn] goes with a publishing workload".into()),
            (Some(_), None, _) => Err("[subscribers] needs [publish]".into()),
            (None, Some(_), _) => Err("[publish] needs [subscribers] or [chat]".into()),
            _ => Err("give either [subscribers] + [publish] (or [chat]), or [connections]".into()),
        }
    }

    /// The measured phase.
    pub fn measured(&self) -> Duration {
        self.executor
            .stages_duration()
            .or(self.duration)
            .unwrap_or_default()
    }

    /// Warm-up applies to publishing workloads only.
    pub fn effective_warmup(&self) -> Duration {
        match self.workload() {
            Ok(Workload::PubSub { .. }) => self.warmup,
            _ => Duration::ZERO,
        }
    }

    /// Connections the run holds open at its peak (all workers together).
    pub fn peak_connections(&self) -> u64 {
        match self.workload() {
            Ok(Workload::PubSub {
                subscribers,
                publish,
                churn,
            }) => {
                let publishers = match (publish.via, self.executor.is_arrival_rate()) {
                    (Via::Ws, true) => publish.connections,
                    (Via::Ws, false) => self.executor.peak(),
                    _ => 0,
                };
                subscribers.count + publishers + churn.map_or(0, |c| c.connections)
            }
            Ok(Workload::Connections(_)) => self.executor.max_vus(),
            Err(_) => 0,
        }
    }

    /// Every threshold, parsed.
    pub fn parsed_thresholds(&self) -> Vec<(String, Threshold)> {
        self.thresholds
            .iter()
            .flat_map(|(metric, specs)| {
                specs
                    .iter()
                    .filter_map(move |s| s.parse().ok().map(|t| (metric.clone(), t)))
            })
            .collect()
    }

    /// The channel name of channel `n`.
    pub fn channel_name(prefix: &str, n: u64) -> String {
        format!("{prefix}-{n}")
    }
}

impl Subscribers {
    /// The channels subscriber `i` joins (indices into the channel set).
    pub fn channels_of(&self, i: u64) -> Vec<u64> {
        if self.users > 0 {
            return Vec::new();
        }
        let first = match self.assign {
            Assign::Spread => i % self.channels,
            Assign::Block => {
                let per = self.count.div_ceil(self.channels).max(1);
                (i / per).min(self.channels - 1)
            }
        };
        (0..self.channels_per_subscriber)
            .map(|k| (first + k) % self.channels)
            .collect()
    }

    /// The user index subscriber `i` authenticates as, if any.
    pub fn user_of(&self, i: u64) -> Option<u64> {
        (self.users > 0).then(|| i % self.users)
    }

    pub fn user_name(&self, u: u64) -> String {
        format!("{}-u{u}", self.channel_prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("scenarios dir") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("read");
            let s =
                Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(s.measured() > Duration::ZERO, "{}", path.display());
            // It survives the trip to a worker process.
            let json = serde_json::to_string(&s).expect("serialize");
            let back: Scenario = serde_json::from_str(&json).expect("deserialize");
            back.validate().expect("still valid");
            assert_eq!(back.measured(), s.measured());
            n += 1;
        }
        assert!(n >= 7, "only {n} scenarios shipped");
    }

    #[test]
    fn ramps_interpolate_between_stages() {
        let e = Executor::RampingArrivalRate {
            start_rate: 0,
            stages: vec![
                Stage {
                    duration: Duration::from_secs(10),
                    target: 100,
                },
                Stage {
                    duration: Duration::from_secs(10),
                    target: 100,
                },
            ],
            max_vus: None,
        };
        assert_eq!(e.target_at(Duration::from_secs(5)), 50.0);
        assert_eq!(e.target_at(Duration::from_secs(15)), 100.0);
        assert_eq!(e.target_at(Duration::from_secs(60)), 100.0);
        assert_eq!(e.peak(), 100);
        assert_eq!(e.stages_duration(), Some(Duration::from_secs(20)));
        let expected = e.expected_iterations(Duration::from_secs(20));
        assert!((expected - 1500.0).abs() < 5.0, "{expected}");
    }

    const BASE: &str = "name = \"x\"\nduration = \"1s\"\n[executor]\ntype = \"constant-vus\"\nvus = 1\n[connections]\n";

    #[test]
    fn bad_scenarios_are_rejected() {
        assert!(Scenario::from_toml(BASE).is_ok());
        assert!(Scenario::from_toml(&format!("{BASE}[thresholds]\nx = [\"p(99)<<1\"]\n")).is_err());
        assert!(Scenario::from_toml(&BASE.replace("constant-vus", "bogus")).is_err());
        assert!(Scenario::from_toml(&BASE.replace("1s", "1y")).is_err());
        assert!(Scenario::from_toml(&BASE.replace("[connections]", "")).is_err());
        assert!(Scenario::from_toml(&BASE.replace("duration = \"1s\"\n", "")).is_err());
        assert!(Scenario::from_toml(&format!("{BASE}bogus = 1\n")).is_err());
        assert!(
            Scenario::from_toml(&format!("urls = [\"ws://10.1.2.3:8000\"]\n{}", BASE)).is_err()
        );
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
    }

    #[test]
    fn k6_threshold_tables_and_names_are_accepted() {
        let text = format!(
            "{BASE}[thresholds]\nws_connecting = [\"p(95)<100\", {{ threshold = \"max<500\", abortOnFail = true }}]\n\"errors{{code:4008}}\" = [\"count<1\"]\n"
        );
        let s = Scenario::from_toml(&text).expect("valid");
        let t = s.parsed_thresholds();
        assert_eq!(t.len(), 3);
        assert!(t
            .iter()
            .any(|(m, t)| m == "ws_connecting" && t.abort_on_fail && t.source == "max<500"));
        assert!(t.iter().any(|(m, _)| m == "errors{code:4008}"));
    }

    #[test]
    fn chat_expands_into_rooms() {
        let text = "name = \"c\"\nduration = \"1s\"\n[executor]\ntype = \"constant-arrival-rate\"\nrate = 10\n[chat]\nrooms = 3\nmembers = 4\n";
        let s = Scenario::from_toml(text).expect("valid");
        let subs = s.subscribers.as_ref().expect("expanded");
        assert_eq!(subs.count, 12);
        let rooms: Vec<u64> = (0..12).map(|i| subs.channels_of(i)[0]).collect();
        assert_eq!(rooms, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        assert_eq!(s.publish.as_ref().map(|p| p.via), Some(Via::Member));
    }

    #[test]
    fn segments_partition_the_work() {
        for total in [0, 1, 7, 1000, 50_001] {
            for of in 1..6 {
                let mut next = 0;
                for i in 0..of {
                    let r = split(total, (i, of));
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn protocol_subscribers_are_published_to_through_the_api() {
        let base = "name = \"p\"\nduration = \"1s\"\njwt_secret = \"s\"\n[executor]\ntype = \"constant-arrival-rate\"\nrate = 10\n";
        let with = |subs: &str, publish: &str| {
            Scenario::from_toml(&format!(
                "{base}[subscribers]\ncount = 4\n{subs}\n[publish]\n{publish}\n"
            ))
        };
        let s = with(
            "protocol = \"phoenix\"",
            "via = \"api\"\nevent = \"new_msg\"",
        )
        .expect("valid");
        let subs = s.subscribers.as_ref().expect("subscribers");
        assert_eq!(subs.protocol, Protocol::Phoenix);
        assert_eq!(subs.protocol_options().heartbeat, Duration::from_secs(30));
        assert_eq!(
            s.publish.as_ref().map(|p| p.event.as_str()),
            Some("new_msg")
        );
        // Native stays the default, with the default event name unused.
        let s = with("", "via = \"api\"").expect("valid");
        assert_eq!(
            s.subscribers.as_ref().map(|s| s.protocol),
            Some(Protocol::Native)
        );
        for (subs, publish) in [
            ("protocol = \"socketio\"", "via = \"ws\""),
            ("protocol = \"cells\"", "via = \"member\""),
            ("protocol = \"phoenix\"\nusers = 2", "via = \"api\""),
            ("protocol = \"socketio\"\neio = 5", "via = \"api\""),
            ("protocol = \"mqtt\"", "via = \"api\""),
        ] {
            assert!(with(subs, publish).is_err(), "{subs} / {publish}");
        }
        let no_secret = "name = \"p\"\nduration = \"1s\"\n[executor]\ntype = \"constant-vus\"\nvus = 1\n[subscribers]\ncount = 1\nprotocol = \"cells\"\n[publish]\nvia = \"api\"\n";
        assert!(Scenario::from_toml(no_secret)
            .expect_err("cells needs tokens")
            .contains("jwt_secret"));
    }
}
