//! Scenario files (TOML): where to connect, how load arrives (the executor),
//! what the virtual users do (the workload), and the pass/fail thresholds.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::threshold::Threshold;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Node base URLs (`ws://host:port`); connections are spread over them.
    #[serde(default = "default_urls")]
    pub urls: Vec<String>,
    /// Server API key (for `publish_via = "api"`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// Measured phase, e.g. "30s", "2m".
    #[serde(with = "duration_text")]
    pub duration: Duration,
    /// Publishing before the measured phase (connections and caches warm up);
    /// those messages are marked and left out of every metric.
    #[serde(default = "default_warmup", with = "duration_text")]
    pub warmup: Duration,
    /// Time after the last publish to wait for in-flight deliveries.
    #[serde(default = "default_drain", with = "duration_text")]
    pub drain: Duration,
    pub executor: Executor,
    pub workload: Workload,
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

/// A threshold as a string, or a table with `abortOnFail`.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum ThresholdSpec {
    Plain(String),
    Full {
        threshold: String,
        #[serde(rename = "abortOnFail", default)]
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
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    #[serde(with = "duration_text")]
    pub duration: Duration,
    pub target: u64,
}

/// How load arrives (k6 executors).
#[derive(Debug, Deserialize, Clone)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Executor {
    /// A fixed number of virtual users for the whole duration.
    ConstantVus { vus: u64 },
    /// Virtual users ramped through stages.
    RampingVus {
        #[serde(default)]
        start_vus: u64,
        stages: Vec<Stage>,
    },
    /// A fixed number of iterations (publishes) per second.
    ConstantArrivalRate { rate: u64 },
    /// Iterations per second ramped through stages.
    RampingArrivalRate {
        #[serde(default)]
        start_rate: u64,
        stages: Vec<Stage>,
    },
}

impl Executor {
    /// The target (VUs or iterations/s) at `t` into the run.
    pub fn target_at(&self, t: Duration) -> u64 {
        match self {
            Executor::ConstantVus { vus } => *vus,
            Executor::ConstantArrivalRate { rate } => *rate,
            Executor::RampingVus { start_vus, stages } => ramp(*start_vus, stages, t),
            Executor::RampingArrivalRate { start_rate, stages } => ramp(*start_rate, stages, t),
        }
    }

    /// True for executors that drive iterations per second.
    pub fn is_arrival_rate(&self) -> bool {
        matches!(
            self,
            Executor::ConstantArrivalRate { .. } | Executor::RampingArrivalRate { .. }
        )
    }

    /// The largest target over the run.
    pub fn peak(&self) -> u64 {
        match self {
            Executor::ConstantVus { vus } => *vus,
            Executor::ConstantArrivalRate { rate } => *rate,
            Executor::RampingVus {
                start_vus: s,
                stages,
            }
            | Executor::RampingArrivalRate {
                start_rate: s,
                stages,
            } => stages
                .iter()
                .map(|st| st.target)
                .chain([*s])
                .max()
                .unwrap_or(0),
        }
    }
}

fn ramp(start: u64, stages: &[Stage], t: Duration) -> u64 {
    let mut from = start as f64;
    let mut elapsed = Duration::ZERO;
    for stage in stages {
        if t < elapsed + stage.duration {
            let f = (t - elapsed).as_secs_f64() / stage.duration.as_secs_f64().max(1e-9);
            return (from + (stage.target as f64 - from) * f).round() as u64;
        }
        elapsed += stage.duration;
        from = stage.target as f64;
    }
    from as u64
}

/// What virtual users do.
#[derive(Debug, Deserialize, Clone)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Workload {
    /// `subscribers` sockets in one channel; each publish reaches all of them.
    Fanout {
        subscribers: u64,
        #[serde(default = "default_payload")]
        payload_bytes: usize,
        #[serde(default)]
        publish_via: Via,
        #[serde(default = "one")]
        publishers: u64,
        #[serde(default)]
        history: bool,
    },
    /// `subscribers` sockets, each alone in its own channel; each publish
    /// goes to one random channel.
    Targeted {
        subscribers: u64,
        #[serde(default = "default_payload")]
        payload_bytes: usize,
        #[serde(default)]
        publish_via: Via,
        #[serde(default = "one")]
        publishers: u64,
        #[serde(default)]
        history: bool,
    },
    /// `rooms` chat rooms of `members` sockets; each publish is a member
    /// posting to its room (every member of the room receives it).
    Chat {
        rooms: u64,
        members: u64,
        #[serde(default = "default_payload")]
        payload_bytes: usize,
    },
    /// Idle connections held open (executor VUs); reports node memory per
    /// connection when `node_pid` is given.
    Idle {
        #[serde(default)]
        node_pid: Option<u32>,
    },
    /// Connect, read the connection frame, close, repeat (executor VUs loops).
    Connect {},
}

fn default_payload() -> usize {
    64
}

fn one() -> u64 {
    1
}

/// How publishers reach the node.
#[derive(Debug, Deserialize, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// `channel` frames over WebSocket (run the node with a high
    /// `--client-rate` and `--client-channel-publish any`).
    #[default]
    Ws,
    /// `POST /api/notify/channels`.
    Api,
}

/// Parse "250ms", "30s", "2m", "1h", or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {text:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        for specs in scenario.thresholds.values() {
            for spec in specs {
                spec.parse().map_err(|e| e.to_string())?;
            }
        }
        if scenario.urls.is_empty() {
            return Err("urls must not be empty".into());
        }
        Ok(scenario)
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
            Scenario::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
        assert!(n >= 5, "only {n} scenarios shipped");
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
        };
        assert_eq!(e.target_at(Duration::from_secs(5)), 50);
        assert_eq!(e.target_at(Duration::from_secs(15)), 100);
        assert_eq!(e.target_at(Duration::from_secs(60)), 100);
        assert_eq!(e.peak(), 100);
    }

    #[test]
    fn bad_scenarios_are_rejected() {
        let base = "name = \"x\"\nduration = \"1s\"\n[executor]\ntype = \"constant-vus\"\nvus = 1\n[workload]\nkind = \"connect\"\n";
        assert!(Scenario::from_toml(base).is_ok());
        assert!(Scenario::from_toml(&format!("{base}[thresholds]\nx = [\"p(99)<<1\"]\n")).is_err());
        assert!(Scenario::from_toml(&base.replace("constant-vus", "bogus")).is_err());
        assert!(Scenario::from_toml(&base.replace("1s", "1y")).is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    }
}
