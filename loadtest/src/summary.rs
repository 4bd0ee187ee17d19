//! The end-of-test summary (text, k6 style), the `--summary-export` JSON and
//! the self-contained HTML report.

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::metrics::{Metric, Metrics, ThresholdResult};
use crate::run::Sample;
use crate::threshold::Stat;

/// The text summary printed at the end of a run.
pub fn text(name: &str, metrics: &Metrics, results: &[ThresholdResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n     scenario: {name} ({:.1}s)\n", metrics.seconds);
    for (metric, value) in &metrics.by_name {
        let mark = match results
            .iter()
            .filter(|r| &r.metric == metric)
            .map(|r| r.ok)
            .reduce(|a, b| a && b)
        {
            Some(true) => "✓ ",
            Some(false) => "✗ ",
            None => "  ",
        };
        let body = match value {
            Metric::Trend(t) => format!(
                "avg={:.2}ms min={:.2}ms med={:.2}ms max={:.2}ms p(90)={:.2}ms p(95)={:.2}ms p(99)={:.2}ms",
                t.stat(&Stat::Avg),
                t.stat(&Stat::Min),
                t.stat(&Stat::Med),
                t.stat(&Stat::Max),
                t.stat(&Stat::Percentile(90.0)),
                t.stat(&Stat::Percentile(95.0)),
                t.stat(&Stat::Percentile(99.0)),
            ),
            Metric::Counter(c) => format!("{c} {:.1}/s", *c as f64 / metrics.seconds.max(1e-9)),
            Metric::Rate(p, t) => format!(
                "{:.4}% {p} of {t}",
                if *t == 0 { 0.0 } else { 100.0 * *p as f64 / *t as f64 }
            ),
            Metric::Gauge(g) => format!("{g:.1}"),
        };
        let dots = ".".repeat(30usize.saturating_sub(metric.len()));
        let _ = writeln!(out, "   {mark}{metric}{dots}: {body}");
    }
    if !results.is_empty() {
        let _ = writeln!(out, "\n     thresholds:");
        for r in results {
            let observed = r
                .observed
                .map(|v| format!("{v:.4}"))
                .unwrap_or_else(|| "missing".into());
            let _ = writeln!(
                out,
                "   {} {} {} (observed {})",
                if r.ok { "✓" } else { "✗" },
                r.metric,
                r.threshold.source,
                observed
            );
        }
    }
    out
}

/// `--summary-export`: k6's summary shape (metrics with their statistics and
/// thresholds as `{"ok": bool}`, and an empty root group).
pub fn export(metrics: &Metrics, results: &[ThresholdResult]) -> Value {
    let mut out = Map::new();
    for name in metrics.by_name.keys() {
        let mut m = metrics.json(name).unwrap_or(Value::Null);
        let mine: Vec<&ThresholdResult> = results.iter().filter(|r| &r.metric == name).collect();
        if !mine.is_empty() {
            let mut t = Map::new();
            for r in mine {
                t.insert(r.threshold.source.clone(), json!({"ok": r.ok}));
            }
            m["thresholds"] = Value::Object(t);
        }
        out.insert(name.clone(), m);
    }
    // Thresholds on metrics that never appeared still show, failed.
    for r in results {
        if !out.contains_key(&r.metric) {
            out.insert(
                r.metric.clone(),
                json!({"thresholds": {r.threshold.source.clone(): {"ok": false}}}),
            );
        }
    }
    json!({
        "root_group": {"name": "", "path": "", "id": "d41d8cd98f00b204e9800998ecf8427e", "groups": {}, "checks": {}},
        "metrics": Value::Object(out),
    })
}

/// A self-contained HTML report with throughput and latency charts (inline SVG).
pub fn html(
    name: &str,
    metrics: &Metrics,
    results: &[ThresholdResult],
    samples: &[Sample],
) -> String {
    let chart = |title: &str, series: &[(&str, Vec<f64>)]| -> String {
        let (w, h) = (720.0, 220.0);
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(1e-9, f64::max);
        let n = series
            .iter()
            .map(|(_, v)| v.len())
            .max()
            .unwrap_or(0)
            .max(2);
        let colours = ["#2b6cb0", "#c05621", "#2f855a"];
        let mut svg = format!(
            "<h3>{title}</h3><svg width=\"{w}\" height=\"{}\" style=\"border:1px solid #ccc\">",
            h + 20.0
        );
        for (i, (label, values)) in series.iter().enumerate() {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .map(|(x, v)| {
                    format!(
                        "{:.1},{:.1}",
                        x as f64 * w / (n - 1) as f64,
                        h - v / max * (h - 10.0)
                    )
                })
                .collect();
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/><text x=\"8\" y=\"{}\" fill=\"{}\">{label}</text>",
                colours[i % colours.len()],
                points.join(" "),
                14.0 + 16.0 * (i as f64 + 1.0),
                colours[i % colours.len()]
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"14\" text-anchor=\"end\">max {max:.1}</text></svg>",
            w - 6.0
        );
        svg
    };
    let sent: Vec<f64> = samples.iter().map(|s| s.sent_per_s as f64).collect();
    let received: Vec<f64> = samples.iter().map(|s| s.received_per_s as f64).collect();
    let p99: Vec<f64> = samples.iter().map(|s| s.p99_ms).collect();
    let summary = text(name, metrics, results)
        .replace('&', "&amp;")
        .replace('<', "&lt;");
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>pubmesh-load: {name}</title></head>\
         <body style=\"font-family:sans-serif\"><h1>pubmesh-load: {name}</h1>{}{}<h3>Summary</h3><pre>{summary}</pre></body></html>",
        chart("Throughput per second (published, delivered)", &[("published/s", sent), ("delivered/s", received)]),
        chart("Delivery latency p99 per second (ms)", &[("p99 ms", p99)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::evaluate;
    use crate::threshold::Threshold;

    #[test]
    fn export_has_k6_shape_with_threshold_results() {
        let mut m = Metrics {
            seconds: 2.0,
            ..Metrics::default()
        };
        m.trend("delivery_latency").record_micros(2_000);
        m.add("ws_msgs_received", 10);
        m.rate("delivery_loss", 0, 10);
        let t = |s: &str| Threshold::parse(s).expect("valid");
        let results = evaluate(
            &m,
            &[
                ("delivery_latency".into(), t("p(99)<50")),
                ("delivery_loss".into(), t("rate<0.001")),
                ("absent".into(), t("count>0")),
            ],
        );
        let v = export(&m, &results);
        assert_eq!(
            v["metrics"]["delivery_latency"]["thresholds"]["p(99)<50"]["ok"],
            true
        );
        assert!(v["metrics"]["delivery_latency"]["p(95)"].as_f64().is_some());
        assert_eq!(v["metrics"]["ws_msgs_received"]["count"], 10);
        assert_eq!(v["metrics"]["ws_msgs_received"]["rate"], 5.0);
        assert_eq!(v["metrics"]["delivery_loss"]["value"], 0.0);
        assert_eq!(v["metrics"]["absent"]["thresholds"]["count>0"]["ok"], false);
        assert!(v["root_group"].is_object());
        let summary = text("x", &m, &results);
        assert!(summary.contains("✓ delivery_latency p(99)<50"), "{summary}");
        assert!(summary.contains("✗ absent count>0"), "{summary}");
        let page = html("x", &m, &results, &[]);
        assert!(page.contains("<svg") && page.contains("pubmesh-load: x"));
    }
}
