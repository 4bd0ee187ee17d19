//! pubmesh-load: a k6-style load harness for pubmesh.
//!
//! - [`scenario`]: scenario files (executors, workloads, thresholds);
//! - [`run`]: the engine (connections, publishers, end-to-end latency);
//! - [`metrics`]: trends, counters, rates, and threshold evaluation;
//! - [`threshold`]: k6 threshold expressions;
//! - [`summary`]: the text summary, `--summary-export` JSON and HTML report.

pub mod metrics;
pub mod run;
pub mod scenario;
pub mod summary;
pub mod threshold;
