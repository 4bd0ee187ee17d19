//! pubmesh-load: a k6-style load harness for pubmesh.
//!
//! - [`scenario`]: scenario files (executors, workloads, thresholds);
//! - [`client`]: sockets from 127.0.0.x sources, payload stamps, the cheap
//!   receive-path scan;
//! - [`protocol`]: subscribers speaking Phoenix, Socket.IO or the Cells
//!   gateway instead of the native protocol;
//! - [`engine`]: one segment of a run (subscribers, publishers, churn);
//! - [`coordinator`]: segments in-process or in worker processes, merging,
//!   progress, `abortOnFail`;
//! - [`metrics`]: trends, counters, rates, gauges, checks, threshold evaluation;
//! - [`threshold`]: k6 threshold expressions;
//! - [`summary`]: the text summary, `--summary-export` JSON and HTML report.

pub mod client;
pub mod coordinator;
pub mod engine;
pub mod metrics;
pub mod protocol;
pub mod scenario;
pub mod summary;
pub mod threshold;

/// Exit code when a threshold fails (as k6).
pub const THRESHOLDS_FAILED: u8 = 99;
