//! The end-of-test summary (text, k6 style), the `--summary-export` JSON (k6's
//! shape) and the self-contained HTML report (inline SVG, no scripts).

use std::fmt::Write;

use serde_json::{json, Map, Value};

use crate::coordinator::Sample;
use crate::metrics::{Metric, Metrics, ThresholdResult};
use crate::threshold::Stat;

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2}s", v / 1000.0)
    } else if v >= 1.0 {
        format!("{v:.2}ms")
    } else {
        format!("{:.0}µs", v * 1000.0)
    }
}

/// The text summary printed at the end of a run.
pub fn text(name: &str, metrics: &Metrics, results: &[ThresholdResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n     scenario: {name} ({:.1}s measured)\n",
        metrics.seconds
    );
    if !metrics.checks.is_empty() {
        for (check, (p, f)) in &metrics.checks {
            let mark = if *f == 0 { "✓" } else { "✗" };
            let _ = writeln!(out, "     {mark} {check} ({p} passed, {f} failed)");
        }
        out.push('\n');
    }
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
                "avg={} min={} med={} max={} p(90)={} p(95)={} p(99)={} count={}",
                fmt_ms(t.stat(&Stat::Avg)),
                fmt_ms(t.stat(&Stat::Min)),
                fmt_ms(t.stat(&Stat::Med)),
                fmt_ms(t.stat(&Stat::Max)),
                fmt_ms(t.stat(&Stat::Percentile(90.0))),
                fmt_ms(t.stat(&Stat::Percentile(95.0))),
                fmt_ms(t.stat(&Stat::Percentile(99.0))),
                t.count(),
            ),
            Metric::Counter(c) => {
                format!("{c:<12} {:.1}/s", *c as f64 / metrics.seconds.max(1e-9))
            }
            Metric::Rate(p, t) => format!(
                "{:.6}% {p} of {t}",
                if *t == 0 {
                    0.0
                } else {
                    100.0 * *p as f64 / *t as f64
                }
            ),
            Metric::Gauge(g) => format!("{g:.1}"),
        };
        let dots = ".".repeat(32usize.saturating_sub(metric.chars().count()));
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
                "     {} {} {} (observed {})",
                if r.ok { "✓" } else { "✗" },
                r.metric,
                r.threshold.source,
                observed
            );
        }
    }
    out
}

/// k6's group id: md5 of the path; the root group's path is empty.
const ROOT_GROUP_ID: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// k6's id for a group or check: the hex md5 of its path.
fn k6_id(path: &str) -> String {
    use md5::{Digest, Md5};
    Md5::digest(path.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The trend statistics the export and summary carry unless
/// `--summary-trend-stats` says otherwise: k6's defaults plus `p(99)`.
pub const DEFAULT_TREND_STATS: &str = "avg,min,med,max,p(90),p(95),p(99)";

/// Parse a k6 `--summary-trend-stats` list: `avg`, `min`, `med`, `max`,
/// `count` and `p(N)` with N in 0..=100, comma-separated.
pub fn parse_trend_stats(list: &str) -> Result<Vec<(String, Stat)>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let stat = match name {
                "avg" => Stat::Avg,
                "min" => Stat::Min,
                "med" => Stat::Med,
                "max" => Stat::Max,
                "count" => Stat::Count,
                p if p.starts_with("p(") && p.ends_with(')') => {
                    let q: f64 = p[2..p.len() - 1]
                        .parse()
                        .map_err(|_| format!("bad trend stat {p:?}"))?;
                    if !(0.0..=100.0).contains(&q) {
                        return Err(format!("bad trend stat {p:?}: percentile outside 0..100"));
                    }
                    Stat::Percentile(q)
                }
                other => {
                    return Err(format!(
                        "bad trend stat {other:?} (use avg, min, med, max, count or p(N))"
                    ))
                }
            };
            Ok((name.to_string(), stat))
        })
        .collect()
}

/// One metric's values the way k6's `--summary-export` writes them: trends
/// with the chosen summary trend stats, counters `count`/`rate`, rates `passes`/`fails`/`value` (passes
/// count the non-zero samples), gauges `value`/`min`/`max`.
fn k6_values(
    metrics: &Metrics,
    name: &str,
    trend_stats: &[(String, Stat)],
) -> Option<Map<String, Value>> {
    let v = match metrics.by_name.get(name)? {
        Metric::Trend(t) => Value::Object(
            trend_stats
                .iter()
                .map(|(key, stat)| {
                    let v = match stat {
                        Stat::Count => json!(t.count()),
                        stat => json!(t.stat(stat)),
                    };
                    (key.clone(), v)
                })
                .collect(),
        ),
        Metric::Counter(c) => json!({
            "count": c, "rate": *c as f64 / metrics.seconds.max(1e-9),
        }),
        Metric::Rate(p, t) => json!({
            "passes": p, "fails": t - p,
            "value": if *t == 0 { 0.0 } else { *p as f64 / *t as f64 },
        }),
        Metric::Gauge(g) => {
            let (min, max) = metrics.gauge_ranges.get(name).copied().unwrap_or((*g, *g));
            json!({"value": g, "min": min, "max": max})
        }
    };
    match v {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// `--summary-export`: k6's summary-export JSON. `metrics.<name>` holds the
/// statistics and, when the metric has thresholds, `thresholds:
/// {"<expr>": bool}` where — as k6 writes it — `true` means the threshold
/// FAILED. `root_group.checks.<name>` holds `passes`/`fails`, and
/// `state.testRunDurationMs` is the whole run (warm-up and drain included).
pub fn export(
    metrics: &Metrics,
    results: &[ThresholdResult],
    trend_stats: &[(String, Stat)],
    run_ms: f64,
) -> Value {
    let mut out = Map::new();
    for name in metrics.by_name.keys() {
        if let Some(values) = k6_values(metrics, name, trend_stats) {
            out.insert(name.clone(), Value::Object(values));
        }
    }
    // Thresholds on metrics that never appeared still show, failed.
    for r in results {
        let entry = out
            .entry(r.metric.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if entry.get("thresholds").is_none() {
            entry["thresholds"] = json!({});
        }
        entry["thresholds"][r.threshold.source.clone()] = Value::Bool(!r.ok);
    }
    let checks: Map<String, Value> = metrics
        .checks
        .iter()
        .map(|(name, (p, f))| {
            let path = format!("::{name}");
            (
                name.clone(),
                json!({"name": name, "id": k6_id(&path), "path": path, "passes": p, "fails": f}),
            )
        })
        .collect();
    json!({
        "root_group": {"name": "", "path": "", "id": ROOT_GROUP_ID, "groups": {}, "checks": checks},
        "metrics": Value::Object(out),
        "state": {
            "isStdOutTTY": std::io::IsTerminal::is_terminal(&std::io::stdout()),
            "isStdErrTTY": std::io::IsTerminal::is_terminal(&std::io::stderr()),
            "testRunDurationMs": run_ms,
        },
    })
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart as inline SVG: x = seconds, one polyline per series.
///
/// Every figure carries its unit: in the caption, on the y axis title and on
/// every tick label; the x axis is seconds since the measured phase began.
fn chart(title: &str, unit: &str, xs: &[f64], series: &[(&str, Vec<f64>)]) -> String {
    let (w, h, left, bottom, top) = (760.0, 240.0, 64.0, 28.0, 12.0);
    let plot_w = w - left - 12.0;
    let plot_h = h - bottom - top;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let max = if max <= 0.0 { 1.0 } else { max * 1.1 };
    let (x0, x1) = match (xs.first(), xs.last()) {
        (Some(a), Some(b)) if b > a => (*a, *b),
        (Some(a), _) => (*a - 1.0, *a + 1.0),
        _ => (0.0, 1.0),
    };
    let px = |x: f64| left + (x - x0) / (x1 - x0) * plot_w;
    let py = |y: f64| top + plot_h - y / max * plot_h;
    let colours = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];
    let mut svg = format!(
        "<figure><figcaption>{} ({})</figcaption><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\">\
<text x=\"12\" y=\"{:.1}\" font-size=\"11\" transform=\"rotate(-90 12 {:.1})\" text-anchor=\"middle\">{}</text>\
<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">seconds since measuring began (s)</text>",
        escape(title),
        escape(unit.trim()),
        top + plot_h / 2.0,
        top + plot_h / 2.0,
        escape(unit.trim()),
        left + plot_w,
        top + 24.0
    );
    // Grid and axis labels.
    for k in 0..=4 {
        let v = max * k as f64 / 4.0;
        let y = py(v);
        let _ = write!(
            svg,
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e2e8f0\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left + plot_w,
            left - 6.0,
            y + 4.0,
            short(v, unit)
        );
    }
    for k in 0..=5 {
        let x = x0 + (x1 - x0) * k as f64 / 5.0;
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{x:.0}s</text>",
            px(x),
            h - 8.0
        );
    }
    for (i, (label, values)) in series.iter().enumerate() {
        let colour = colours[i % colours.len()];
        let points: Vec<String> = xs
            .iter()
            .zip(values)
            .map(|(x, v)| format!("{:.1},{:.1}", px(*x), py(*v)))
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" fill=\"{colour}\">{}</text>",
            points.join(" "),
            left + 8.0 + 150.0 * i as f64,
            top + 12.0,
            escape(label)
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn short(v: f64, unit: &str) -> String {
    let s = if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    };
    format!("{s} {}", unit.trim())
}

/// What the report says about the run itself.
#[derive(Clone, Debug, Default)]
pub struct RunInfo {
    /// The command line, as typed.
    pub command: String,
    /// When the run started (RFC 7231 date, UTC).
    pub date: String,
    /// The git commit of the working directory, when there is one.
    pub commit: Option<String>,
    pub urls: Vec<String>,
    /// The executor's load, in words (rate or VUs).
    pub load: String,
}

/// The unit of a threshold's observed value.
fn observed_unit(metrics: &Metrics, r: &ThresholdResult) -> &'static str {
    match (metrics.by_name.get(&r.metric), &r.threshold.stat) {
        (_, Stat::Count) => "",
        (_, Stat::Rate) if matches!(metrics.by_name.get(&r.metric), Some(Metric::Counter(_))) => {
            "/s"
        }
        (_, Stat::Rate) => "(ratio)",
        (Some(Metric::Trend(_)), _) => "ms",
        _ => "",
    }
}

/// A self-contained HTML report: the run's metadata, thresholds, latency,
/// throughput, connections, errors and connect time over time (sampled once
/// a second), and the text summary.
pub fn html(
    name: &str,
    description: &str,
    info: &RunInfo,
    metrics: &Metrics,
    results: &[ThresholdResult],
    samples: &[Sample],
) -> String {
    let xs: Vec<f64> = samples.iter().map(|s| s.t).collect();
    let col = |f: fn(&Sample) -> f64| samples.iter().map(f).collect::<Vec<f64>>();
    let latency = chart(
        "Delivery latency per second",
        "ms",
        &xs,
        &[
            ("p50", col(|s| s.p50_ms)),
            ("p99", col(|s| s.p99_ms)),
            ("max", col(|s| s.max_ms)),
        ],
    );
    let throughput = chart(
        "Throughput per second",
        "/s",
        &xs,
        &[
            ("iterations (publishes)", col(|s| s.sent_per_s as f64)),
            ("deliveries", col(|s| s.delivered_per_s as f64)),
        ],
    );
    let conns = chart(
        "Open connections and VUs",
        "count",
        &xs,
        &[
            ("connections", col(|s| s.connections as f64)),
            ("vus", col(|s| s.vus as f64)),
        ],
    );
    let errors = chart(
        "Errors per second",
        "errors/s",
        &xs,
        &[("errors", col(|s| s.errors as f64))],
    );
    let connect = chart(
        "WebSocket connect time of the connections opened each second",
        "ms",
        &xs,
        &[
            ("p50", col(|s| s.connect_p50_ms)),
            ("max", col(|s| s.connect_max_ms)),
        ],
    );
    let mut meta = String::new();
    for (k, v) in [
        ("command", info.command.clone()),
        ("date", info.date.clone()),
        (
            "commit",
            info.commit
                .clone()
                .unwrap_or_else(|| "not a git checkout".into()),
        ),
        ("target URLs", info.urls.join(", ")),
        ("load", info.load.clone()),
        ("measured", format!("{:.1} s", metrics.seconds)),
    ] {
        let _ = write!(
            meta,
            "<tr><th>{k}</th><td><code>{}</code></td></tr>",
            escape(&v)
        );
    }
    let mut rows = String::new();
    for r in results {
        let _ = write!(
            rows,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            if r.ok { "ok" } else { "fail" },
            if r.ok { "✓" } else { "✗" },
            escape(&r.metric),
            escape(&r.threshold.source),
            r.observed
                .map(|v| format!("{v:.4} {}", observed_unit(metrics, r))
                    .trim_end()
                    .to_string())
                .unwrap_or_else(|| "missing".into())
        );
    }
    let passed = results.iter().all(|r| r.ok);
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pubmesh-load: {title}</title>\
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#1a202c}}figure{{margin:16px 0}}figcaption{{font-weight:600;margin-bottom:4px}}\
svg{{border:1px solid #cbd5e0;background:#fff}}table{{border-collapse:collapse}}td,th{{padding:4px 10px;border-bottom:1px solid #e2e8f0;text-align:left}}\
tr.ok td:first-child{{color:#2f855a}}tr.fail td:first-child{{color:#c53030}}pre{{background:#f7fafc;padding:12px;overflow-x:auto}}\
.verdict{{font-size:1.2em;font-weight:600;color:{colour}}}</style></head><body>\
<h1>pubmesh-load: {title}</h1><p>{desc}</p><p class=\"verdict\">{verdict}</p>\
<h2>Run</h2><table class=\"meta\">{meta}</table>\
<h2>Thresholds</h2><table><tr><th></th><th>metric</th><th>threshold</th><th>observed</th></tr>{rows}</table>\
<h2>Over time</h2>{latency}{throughput}{conns}{errors}{connect}<h2>Summary</h2><pre>{summary}</pre></body></html>",
        title = escape(name),
        desc = escape(description),
        colour = if passed { "#2f855a" } else { "#c53030" },
        verdict = if passed {
            "All thresholds passed"
        } else {
            "Some thresholds failed"
        },
        summary = escape(&text(name, metrics, results)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::evaluate;
    use crate::threshold::Threshold;

    fn sample(t: f64) -> Sample {
        Sample {
            t,
            sent_per_s: 100,
            delivered_per_s: 1000,
            received_per_s: 1000,
            p50_ms: 1.0,
            p99_ms: 3.0,
            max_ms: 9.0,
            connections: 10,
            vus: 1,
            errors: 2,
            connect_p50_ms: 1.5,
            connect_max_ms: 4.0,
        }
    }

    #[test]
    fn export_has_k6_shape_with_threshold_results() {
        let mut m = Metrics {
            seconds: 2.0,
            ..Metrics::default()
        };
        m.trend("delivery_latency").record_micros(2_000);
        m.add("ws_msgs_received", 10);
        m.rate("delivery_loss", 0, 10);
        m.check("connection frame received", true);
        m.check("connection frame received", false);
        let t = |s: &str| Threshold::parse(s).expect("valid");
        let results = evaluate(
            &m,
            &[
                ("delivery_latency".into(), t("p(99)<50")),
                ("delivery_loss".into(), t("rate<0.001")),
                ("absent".into(), t("count>0")),
            ],
        );
        let k6_default = parse_trend_stats("avg,min,med,max,p(90),p(95)").expect("stats");
        let v = export(&m, &results, &k6_default, 12_345.0);
        let lat = &v["metrics"]["delivery_latency"];
        // k6 writes `true` for a FAILED threshold.
        assert_eq!(lat["thresholds"]["p(99)<50"], false);
        let keys: Vec<&String> = lat.as_object().expect("object").keys().collect();
        assert_eq!(
            keys,
            ["avg", "max", "med", "min", "p(90)", "p(95)", "thresholds"]
        );
        assert_eq!(lat["max"].as_f64().map(|v| v.round()), Some(2.0));
        assert_eq!(
            v["metrics"]["ws_msgs_received"],
            json!({"count": 10, "rate": 5.0})
        );
        assert_eq!(v["metrics"]["delivery_loss"]["value"], 0.0);
        assert_eq!(v["metrics"]["delivery_loss"]["passes"], 0);
        assert_eq!(v["metrics"]["delivery_loss"]["fails"], 10);
        assert_eq!(
            v["metrics"]["delivery_loss"]["thresholds"]["rate<0.001"],
            false
        );
        assert_eq!(
            v["metrics"]["absent"],
            json!({"thresholds": {"count>0": true}})
        );
        let check = &v["root_group"]["checks"]["connection frame received"];
        assert_eq!(check["passes"], 1);
        assert_eq!(check["fails"], 1);
        assert_eq!(check["path"], "::connection frame received");
        assert_eq!(check["id"].as_str().map(str::len), Some(32));
        assert_eq!(v["root_group"]["path"], "");
        assert_eq!(v["root_group"]["id"], k6_id(""));
        assert!(v["root_group"]["groups"].is_object());
        assert_eq!(v["state"]["testRunDurationMs"], 12_345.0);
        // The default adds p(99); `count` and any percentile can be asked for.
        let stats = parse_trend_stats(DEFAULT_TREND_STATS).expect("stats");
        assert!(export(&m, &results, &stats, 1.0)["metrics"]["delivery_latency"]["p(99)"].is_f64());
        let stats = parse_trend_stats("count, p(99.9)").expect("stats");
        let lat = &export(&m, &results, &stats, 1.0)["metrics"]["delivery_latency"];
        assert_eq!(lat["count"], 1);
        assert!(lat["p(99.9)"].is_f64() && lat.get("avg").is_none());
        assert!(parse_trend_stats("p(101)").is_err());
        assert!(parse_trend_stats("mean").is_err());
        let summary = text("x", &m, &results);
        assert!(summary.contains("✓ delivery_latency p(99)<50"), "{summary}");
        assert!(summary.contains("✗ absent count>0"), "{summary}");
        assert!(summary.contains("✗ connection frame received"), "{summary}");
    }

    #[test]
    fn report_is_self_contained_with_charts() {
        let mut m = Metrics::default();
        m.trend("delivery_latency").record_micros(2_000);
        let results = evaluate(
            &m,
            &[(
                "delivery_latency".into(),
                Threshold::parse("p(99)<50").expect("valid"),
            )],
        );
        let samples: Vec<Sample> = (0..5).map(|i| sample(i as f64)).collect();
        let info = RunInfo {
            command: "pubmesh-load run s.toml --rate 40".into(),
            date: "Thu, 03 Dec 2026 09:00:00 GMT".into(),
            commit: Some("abc1234".into()),
            urls: vec!["ws://127.0.0.1:7000/ws".into()],
            load: "40 iterations started per second".into(),
        };
        let page = html("x<y", "d", &info, &m, &results, &samples);
        assert!(page.contains("pubmesh-load: x&lt;y"));
        for text in [
            "pubmesh-load run s.toml --rate 40",
            "Thu, 03 Dec 2026 09:00:00 GMT",
            "abc1234",
            "ws://127.0.0.1:7000/ws",
            "40 iterations started per second",
        ] {
            assert!(page.contains(text), "{text}");
        }
        assert_eq!(page.matches("<svg").count(), 5);
        assert_eq!(page.matches("<polyline").count(), 10);
        // Every figure names its unit in its caption and on its y axis.
        for (caption, unit) in [
            ("Delivery latency per second", "ms"),
            ("Throughput per second", "/s"),
            ("Open connections and VUs", "count"),
            ("Errors per second", "errors/s"),
            ("WebSocket connect time", "ms"),
        ] {
            let at = page.find(caption).expect(caption);
            let figure = &page[at..at + page[at..].find("</figure>").expect("end")];
            assert!(
                figure.contains(&format!("({unit})</figcaption>")),
                "{caption}"
            );
            assert!(
                figure.contains(&format!("> {unit}</text>"))
                    || figure.contains(&format!(" {unit}</text>")),
                "{caption}"
            );
            assert!(
                figure.contains("seconds since measuring began (s)"),
                "{caption}"
            );
        }
        // The observed value carries its unit too.
        assert!(
            page.contains("2.0000 ms") || page.contains(" ms</td>"),
            "{page}"
        );
        assert!(!page.contains("<script"));
        assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
        // No samples and no commit still render.
        let bare = html("x", "", &RunInfo::default(), &m, &[], &[]);
        assert!(bare.contains("<svg") && bare.contains("not a git checkout"));
    }
}
