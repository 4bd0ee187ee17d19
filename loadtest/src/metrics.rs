//! k6-style metrics: trends (latency distributions), counters, rates.
//! Trends keep microseconds in an HDR histogram and report milliseconds.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::threshold::{Stat, Threshold};

/// A latency distribution in microseconds.
#[derive(Clone)]
pub struct Trend(pub Histogram<u64>);

impl Default for Trend {
    fn default() -> Self {
        Trend(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }
}

impl Trend {
    pub fn record_micros(&mut self, micros: u64) {
        let _ = self.0.record(micros.max(1));
    }

    pub fn merge(&mut self, other: &Trend) {
        let _ = self.0.add(&other.0);
    }

    fn ms(v: u64) -> f64 {
        v as f64 / 1000.0
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
        }
    }
}

/// What a metric is.
#[derive(Clone)]
pub enum Metric {
    Trend(Trend),
    Counter(u64),
    /// passes, total
    Rate(u64, u64),
    Gauge(f64),
}

/// Every metric of a run, by name.
#[derive(Clone, Default)]
pub struct Metrics {
    pub by_name: BTreeMap<String, Metric>,
    /// Seconds the measured phase lasted (for counter rates).
    pub seconds: f64,
}

impl Metrics {
    pub fn trend(&mut self, name: &str) -> &mut Trend {
        let m = self
            .by_name
            .entry(name.to_string())
            .or_insert_with(|| Metric::Trend(Trend::default()));
        match m {
            Metric::Trend(t) => t,
            _ => panic!("{name} is not a trend"),
        }
    }

    pub fn add(&mut self, name: &str, n: u64) {
        let m = self
            .by_name
            .entry(name.to_string())
            .or_insert(Metric::Counter(0));
        if let Metric::Counter(c) = m {
            *c += n;
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

    pub fn gauge(&mut self, name: &str, value: f64) {
        self.by_name.insert(name.to_string(), Metric::Gauge(value));
    }

    pub fn counter(&self, name: &str) -> u64 {
        match self.by_name.get(name) {
            Some(Metric::Counter(c)) => *c,
            _ => 0,
        }
    }

    /// Merge another run's (or worker's) metrics into these.
    pub fn merge(&mut self, other: &Metrics) {
        for (name, metric) in &other.by_name {
            match metric {
                Metric::Trend(t) => self.trend(name).merge(t),
                Metric::Counter(c) => self.add(name, *c),
                Metric::Rate(p, t) => self.rate(name, *p, *t),
                Metric::Gauge(g) => self.gauge(name, *g),
            }
        }
        self.seconds = self.seconds.max(other.seconds);
    }

    /// The statistic a threshold reads; `None` when the metric does not exist.
    pub fn value(&self, name: &str, stat: &Stat) -> Option<f64> {
        Some(match (self.by_name.get(name)?, stat) {
            (Metric::Trend(t), s) => t.stat(s),
            (Metric::Counter(c), Stat::Rate) => *c as f64 / self.seconds.max(1e-9),
            (Metric::Counter(c), _) => *c as f64,
            (Metric::Rate(p, _), Stat::Count) => *p as f64,
            (Metric::Rate(p, t), _) => {
                if *t == 0 {
                    0.0
                } else {
                    *p as f64 / *t as f64
                }
            }
            (Metric::Gauge(g), _) => *g,
        })
    }

    /// The metric as k6's summary JSON shows it.
    pub fn json(&self, name: &str) -> Option<Value> {
        Some(match self.by_name.get(name)? {
            Metric::Trend(t) => {
                let s = |stat| t.stat(&stat);
                json!({
                    "type": "trend", "contains": "time",
                    "avg": s(Stat::Avg), "min": s(Stat::Min), "med": s(Stat::Med), "max": s(Stat::Max),
                    "p(90)": s(Stat::Percentile(90.0)), "p(95)": s(Stat::Percentile(95.0)),
                    "p(99)": s(Stat::Percentile(99.0)), "count": t.0.len(),
                })
            }
            Metric::Counter(c) => json!({
                "type": "counter", "count": c, "rate": *c as f64 / self.seconds.max(1e-9),
            }),
            Metric::Rate(p, t) => json!({
                "type": "rate", "passes": p, "fails": t - p,
                "value": if *t == 0 { 0.0 } else { *p as f64 / *t as f64 },
            }),
            Metric::Gauge(g) => json!({"type": "gauge", "value": g}),
        })
    }
}

/// Outcome of one threshold.
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
        assert_eq!(a.counter("sent"), 5);
    }

    #[test]
    fn thresholds_pass_and_fail_and_missing_metrics_fail() {
        let mut m = Metrics::default();
        m.rate("loss", 1, 1000);
        m.trend("lat").record_micros(5_000);
        let t = |s: &str| Threshold::parse(s).expect("valid");
        let results = evaluate(
            &m,
            &[
                ("loss".into(), t("rate<0.01")),
                ("lat".into(), t("p(99)<1")),
                ("nope".into(), t("count>0")),
            ],
        );
        assert!(results[0].ok);
        assert!(!results[1].ok);
        assert!(!results[2].ok);
    }
}
