//! k6-style metrics: trends (distributions), counters, rates, gauges and
//! checks. Trends keep microseconds in an HDR histogram and report
//! milliseconds. [`Recorder`] is the cheap, sharded recording side used on
//! the receive path; [`Metrics`] is what is merged, evaluated and reported.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{json, Map, Value};

use crate::threshold::{Stat, Threshold};

/// Largest value a trend holds: one hour in microseconds.
const TREND_MAX_MICROS: u64 = 3_600_000_000;

/// A distribution in microseconds.
#[derive(Clone, Debug)]
pub struct Trend(pub Histogram<u64>);

impl Default for Trend {
    fn default() -> Self {
        Trend(Histogram::new_with_bounds(1, TREND_MAX_MICROS, 3).expect("valid bounds"))
    }
}

impl Trend {
    pub fn record_micros(&mut self, micros: u64) {
        let _ = self.0.record(micros.clamp(1, TREND_MAX_MICROS));
    }

    pub fn merge(&mut self, other: &Trend) {
        let _ = self.0.add(&other.0);
    }

    fn ms(v: u64) -> f64 {
        v as f64 / 1000.0
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn stat(&self, stat: &Stat) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        match stat {
            Stat::Avg => self.0.mean() / 1000.0,
            Stat::Min => Self::ms(self.0.min()),
            Stat::Max => Self::ms(self.0.max()),
            Stat::Med => Self::ms(self.0.value_at_quantile(0.5)),
            Stat::Percentile(q) => Self::ms(self.0.value_at_quantile(q / 100.0)),
            Stat::Count => self.0.len() as f64,
            Stat::Rate => 0.0,
            Stat::Value => self.0.mean() / 1000.0,
        }
    }

    /// The histogram in HDR's V2 encoding, hex: for worker → parent streams.
    pub fn to_hex(&self) -> String {
        let mut bytes = Vec::new();
        let _ = V2Serializer::new().serialize(&self.0, &mut bytes);
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push(char::from(b"0123456789abcdef"[(b >> 4) as usize]));
            out.push(char::from(b"0123456789abcdef"[(b & 15) as usize]));
        }
        out
    }

    pub fn from_hex(hex: &str) -> anyhow::Result<Trend> {
        let h = hex.as_bytes();
        if h.len() & 1 == 1 {
            anyhow::bail!("odd hex length");
        }
        let nibble = |c: u8| -> anyhow::Result<u8> {
            Ok(match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => anyhow::bail!("bad hex digit"),
            })
        };
        let mut bytes = Vec::with_capacity(h.len() / 2);
        for pair in h.chunks(2) {
            bytes.push(nibble(pair[0])? << 4 | nibble(pair[1])?);
        }
        let decoded: Histogram<u64> = Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
        let mut t = Trend::default();
        t.0.add(&decoded)
            .map_err(|e| anyhow::anyhow!("histogram: {e:?}"))?;
        Ok(t)
    }
}

/// What a metric is.
#[derive(Clone, Debug)]
pub enum Metric {
    Trend(Trend),
    Counter(u64),
    /// passes, total
    Rate(u64, u64),
    Gauge(f64),
}

/// Every metric of a run (or a worker, or an interval), by name, and the checks.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub by_name: BTreeMap<String, Metric>,
    /// Check name → (passes, fails).
    pub checks: BTreeMap<String, (u64, u64)>,
    /// Seconds the measured phase lasted (for counter rates).
    pub seconds: f64,
    /// A gauge's smallest and largest value over the run, when known
    /// (k6 reports `min`/`max` beside a gauge's last `value`).
    pub gauge_ranges: BTreeMap<String, (f64, f64)>,
}

impl Metrics {
    pub fn trend(&mut self, name: &str) -> &mut Trend {
        if !matches!(self.by_name.get(name), Some(Metric::Trend(_))) {
            self.by_name
                .insert(name.to_string(), Metric::Trend(Trend::default()));
        }
        match self.by_name.get_mut(name) {
            Some(Metric::Trend(t)) => t,
            _ => unreachable!("inserted above"),
        }
    }

    pub fn add(&mut self, name: &str, n: u64) {
        if let Some(Metric::Counter(c)) = self.by_name.get_mut(name) {
            *c += n;
        } else {
            self.by_name.insert(name.to_string(), Metric::Counter(n));
        }
    }

    pub fn rate(&mut self, name: &str, passes: u64, total: u64) {
        let m = self
            .by_name
            .entry(name.to_string())
            .or_insert(Metric::Rate(0, 0));
        if let Metric::Rate(p, t) = m {
            *p += passes;
            *t += total;
        }
    }

    /// Set a gauge. Merging sums gauges (segments of one run add up).
    pub fn gauge(&mut self, name: &str, value: f64) {
        self.by_name.insert(name.to_string(), Metric::Gauge(value));
    }

    /// Set a gauge with the range it moved in over the run.
    pub fn gauge_range(&mut self, name: &str, value: f64, min: f64, max: f64) {
        self.gauge(name, value);
        self.gauge_ranges.insert(name.to_string(), (min, max));
    }

    /// Count an error: the `errors` counter and its `errors{code:…}` submetric.
    pub fn error(&mut self, code: &str) {
        self.add("errors", 1);
        self.add(&format!("errors{{code:{code}}}"), 1);
    }

    pub fn check(&mut self, name: &str, ok: bool) {
        let c = self.checks.entry(name.to_string()).or_insert((0, 0));
        if ok {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }

    pub fn counter(&self, name: &str) -> u64 {
        match self.by_name.get(name) {
            Some(Metric::Counter(c)) => *c,
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.checks.is_empty()
    }

    /// Merge another worker's (or interval's) metrics into these.
    pub fn merge(&mut self, other: &Metrics) {
        for (name, metric) in &other.by_name {
            match metric {
                Metric::Trend(t) => self.trend(name).merge(t),
                Metric::Counter(c) => self.add(name, *c),
                Metric::Rate(p, t) => self.rate(name, *p, *t),
                Metric::Gauge(g) => {
                    let sum = match self.by_name.get(name) {
                        Some(Metric::Gauge(mine)) => mine + g,
                        _ => *g,
                    };
                    self.gauge(name, sum);
                }
            }
        }
        for (name, (p, f)) in &other.checks {
            let c = self.checks.entry(name.clone()).or_insert((0, 0));
            c.0 += p;
            c.1 += f;
        }
        self.seconds = self.seconds.max(other.seconds);
    }

    /// Add k6's `checks` rate metric from the individual checks.
    pub fn finish_checks(&mut self) {
        let (p, f) = self
            .checks
            .values()
            .fold((0, 0), |(p, f), (a, b)| (p + a, f + b));
        if p + f > 0 {
            self.by_name.remove("checks");
            self.rate("checks", p, p + f);
        }
    }

    /// The statistic a threshold reads; `None` when the metric does not exist.
    pub fn value(&self, name: &str, stat: &Stat) -> Option<f64> {
        Some(match (self.by_name.get(name)?, stat) {
            (Metric::Trend(t), s) => t.stat(s),
            (Metric::Counter(c), Stat::Rate) => *c as f64 / self.seconds.max(1e-9),
            (Metric::Counter(c), _) => *c as f64,
            (Metric::Rate(p, _), Stat::Count) => *p as f64,
            (Metric::Rate(p, t), _) => ratio(*p, *t),
            (Metric::Gauge(g), _) => *g,
        })
    }

    /// The metric as k6's summary export shows it.
    pub fn json(&self, name: &str) -> Option<Value> {
        Some(match self.by_name.get(name)? {
            Metric::Trend(t) => {
                let s = |stat| t.stat(&stat);
                json!({
                    "type": "trend", "contains": "time",
                    "avg": s(Stat::Avg), "min": s(Stat::Min), "med": s(Stat::Med), "max": s(Stat::Max),
                    "p(90)": s(Stat::Percentile(90.0)), "p(95)": s(Stat::Percentile(95.0)),
                    "p(99)": s(Stat::Percentile(99.0)), "p(99.9)": s(Stat::Percentile(99.9)),
                    "count": t.count(),
                })
            }
            Metric::Counter(c) => json!({
                "type": "counter", "count": c, "rate": *c as f64 / self.seconds.max(1e-9),
            }),
            Metric::Rate(p, t) => json!({
                "type": "rate", "passes": p, "fails": t - p, "value": ratio(*p, *t),
            }),
            Metric::Gauge(g) => json!({"type": "gauge", "value": g, "min": g, "max": g}),
        })
    }

    /// Serialize for the worker → parent stream (histograms in HDR V2).
    pub fn to_wire(&self) -> Value {
        let mut m = Map::new();
        for (name, metric) in &self.by_name {
            let v = match metric {
                Metric::Trend(t) => json!({"trend": t.to_hex()}),
                Metric::Counter(c) => json!({"counter": c}),
                Metric::Rate(p, t) => json!({"rate": [p, t]}),
                Metric::Gauge(g) => json!({"gauge": g}),
            };
            m.insert(name.clone(), v);
        }
        let checks: Map<String, Value> = self
            .checks
            .iter()
            .map(|(k, (p, f))| (k.clone(), json!([p, f])))
            .collect();
        json!({"metrics": m, "checks": checks, "seconds": self.seconds})
    }

    pub fn from_wire(v: &Value) -> anyhow::Result<Metrics> {
        let bad = || anyhow::anyhow!("malformed metrics from a worker");
        let mut out = Metrics {
            seconds: v["seconds"].as_f64().unwrap_or(0.0),
            ..Metrics::default()
        };
        if let Some(m) = v["metrics"].as_object() {
            for (name, v) in m {
                let metric = if let Some(h) = v["trend"].as_str() {
                    Metric::Trend(Trend::from_hex(h)?)
                } else if let Some(c) = v["counter"].as_u64() {
                    Metric::Counter(c)
                } else if let Some(r) = v["rate"].as_array() {
                    Metric::Rate(
                        r.first().and_then(Value::as_u64).ok_or_else(bad)?,
                        r.get(1).and_then(Value::as_u64).ok_or_else(bad)?,
                    )
                } else if let Some(g) = v["gauge"].as_f64() {
                    Metric::Gauge(g)
                } else {
                    return Err(bad());
                };
                out.by_name.insert(name.clone(), metric);
            }
        }
        if let Some(c) = v["checks"].as_object() {
            for (name, v) in c {
                let p = v[0].as_u64().ok_or_else(bad)?;
                let f = v[1].as_u64().ok_or_else(bad)?;
                out.checks.insert(name.clone(), (p, f));
            }
        }
        Ok(out)
    }
}

fn ratio(p: u64, t: u64) -> f64 {
    if t == 0 {
        0.0
    } else {
        p as f64 / t as f64
    }
}

/// One shard of the recorder: the hot-path fields, and everything else.
#[derive(Default)]
pub struct Shard {
    pub latency: Trend,
    pub deliveries: u64,
    pub msgs_received: u64,
    pub other: Metrics,
}

/// Sharded recording for many tasks on a few threads: each thread records
/// into its own shard (an uncontended lock), and the sampler takes every
/// shard's interval once a second.
pub struct Recorder {
    shards: Vec<Mutex<Shard>>,
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_index() -> usize {
    THREAD_INDEX.with(|c| {
        if c.get() == usize::MAX {
            c.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        c.get()
    })
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            shards: (0..16).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }
}

impl Recorder {
    /// Run `f` on this thread's shard.
    #[inline]
    pub fn with<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> R {
        let i = thread_index() % self.shards.len();
        f(&mut self.shards[i].lock())
    }

    /// A measured delivery `latency_micros` after it was sent.
    #[inline]
    pub fn delivery(&self, latency_micros: u64) {
        self.with(|s| {
            s.latency.record_micros(latency_micros);
            s.deliveries += 1;
            s.msgs_received += 1;
        })
    }

    /// Any other received frame.
    #[inline]
    pub fn received(&self) {
        self.with(|s| s.msgs_received += 1)
    }

    /// Record a rare event into the generic metrics.
    pub fn other(&self, f: impl FnOnce(&mut Metrics)) {
        self.with(|s| f(&mut s.other))
    }

    /// Take everything recorded since the last take, merged into one
    /// [`Metrics`] (`delivery_latency`, `deliveries_received`,
    /// `ws_msgs_received` and the rest).
    pub fn take(&self) -> Metrics {
        let mut out = Metrics::default();
        let mut latency = Trend::default();
        let (mut deliveries, mut received) = (0, 0);
        for shard in &self.shards {
            let mut s = shard.lock();
            if !s.latency.0.is_empty() {
                latency.merge(&s.latency);
                s.latency.0.reset();
            }
            deliveries += std::mem::take(&mut s.deliveries);
            received += std::mem::take(&mut s.msgs_received);
            let other = std::mem::take(&mut s.other);
            drop(s);
            out.merge(&other);
        }
        if !latency.0.is_empty() {
            out.by_name
                .insert("delivery_latency".into(), Metric::Trend(latency));
        }
        if deliveries > 0 {
            out.add("deliveries_received", deliveries);
        }
        if received > 0 {
            out.add("ws_msgs_received", received);
        }
        out
    }
}

/// Outcome of one threshold.
#[derive(Clone, Debug)]
pub struct ThresholdResult {
    pub metric: String,
    pub threshold: Threshold,
    pub observed: Option<f64>,
    pub ok: bool,
}

/// Evaluate thresholds; a threshold on a missing metric fails.
pub fn evaluate(metrics: &Metrics, thresholds: &[(String, Threshold)]) -> Vec<ThresholdResult> {
    thresholds
        .iter()
        .map(|(metric, threshold)| {
            let observed = metrics.value(metric, &threshold.stat);
            ThresholdResult {
                metric: metric.clone(),
                threshold: threshold.clone(),
                observed,
                ok: observed.is_some_and(|v| threshold.passes(v)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trends_report_milliseconds_and_merge() {
        let mut a = Metrics::default();
        for us in [1000, 2000, 3000] {
            a.trend("lat").record_micros(us);
        }
        let mut b = Metrics::default();
        b.trend("lat").record_micros(100_000);
        b.add("sent", 5);
        a.merge(&b);
        assert_eq!(a.value("lat", &Stat::Max).map(|v| v.round()), Some(100.0));
        assert_eq!(a.value("lat", &Stat::Count), Some(4.0));
        assert_eq!(a.value("lat", &Stat::Med).map(|v| v.round()), Some(2.0));
        assert_eq!(a.counter("sent"), 5);
    }

    #[test]
    fn thresholds_pass_and_fail_and_missing_metrics_fail() {
        let mut m = Metrics {
            seconds: 10.0,
            ..Metrics::default()
        };
        m.rate("loss", 1, 1000);
        m.trend("lat").record_micros(5_000);
        m.add("sent", 500);
        let t = |s: &str| Threshold::parse(s).expect("valid");
        let results = evaluate(
            &m,
            &[
                ("loss".into(), t("rate<0.01")),
                ("lat".into(), t("p(99)<1")),
                ("nope".into(), t("count>0")),
                ("sent".into(), t("rate>=50")),
                ("sent".into(), t("count>100")),
                ("lat".into(), t("avg<10")),
            ],
        );
        let oks: Vec<bool> = results.iter().map(|r| r.ok).collect();
        assert_eq!(oks, vec![true, false, false, true, true, true]);
        assert_eq!(results[2].observed, None);
    }

    /// Worker metrics survive the wire and merge into the same totals as
    /// recording everything in one place.
    #[test]
    fn worker_metrics_merge_through_the_wire() {
        let mut all = Metrics::default();
        let mut merged = Metrics::default();
        for w in 0..3u64 {
            let mut m = Metrics {
                seconds: 5.0,
                ..Metrics::default()
            };
            for i in 0..1000 {
                let v = 100 + w * 1000 + i * 37;
                m.trend("delivery_latency").record_micros(v);
                all.trend("delivery_latency").record_micros(v);
            }
            m.add("ws_sessions", 10 + w);
            all.add("ws_sessions", 10 + w);
            m.rate("delivery_loss", w, 100);
            all.rate("delivery_loss", w, 100);
            m.error("4008");
            all.error("4008");
            m.check("connected", true);
            m.check("connected", w != 1);
            all.check("connected", true);
            all.check("connected", w != 1);
            m.gauge("vus", 2.0);
            let wire = serde_json::to_string(&m.to_wire()).expect("json");
            let back =
                Metrics::from_wire(&serde_json::from_str(&wire).expect("parse")).expect("decode");
            merged.merge(&back);
        }
        for stat in [
            Stat::Avg,
            Stat::Min,
            Stat::Max,
            Stat::Med,
            Stat::Percentile(99.0),
            Stat::Count,
        ] {
            assert_eq!(
                merged.value("delivery_latency", &stat),
                all.value("delivery_latency", &stat),
                "{stat}"
            );
        }
        assert_eq!(merged.counter("ws_sessions"), 33);
        assert_eq!(merged.counter("errors{code:4008}"), 3);
        assert_eq!(merged.counter("errors"), 3);
        assert_eq!(merged.value("delivery_loss", &Stat::Rate), Some(0.01));
        assert_eq!(merged.checks["connected"], (5, 1));
        assert_eq!(merged.value("vus", &Stat::Avg), Some(6.0));
        assert_eq!(merged.seconds, 5.0);
        merged.finish_checks();
        assert_eq!(merged.value("checks", &Stat::Rate), Some(5.0 / 6.0));
    }

    #[test]
    fn recorder_takes_intervals() {
        let r = Recorder::default();
        r.delivery(1500);
        r.delivery(2500);
        r.received();
        r.other(|m| m.error("forbidden"));
        let first = r.take();
        assert_eq!(first.counter("deliveries_received"), 2);
        assert_eq!(first.counter("ws_msgs_received"), 3);
        assert_eq!(first.counter("errors{code:forbidden}"), 1);
        assert_eq!(first.value("delivery_latency", &Stat::Count), Some(2.0));
        let second = r.take();
        assert!(second.is_empty(), "{second:?}");
    }
}
