//! The Sluice executor: registers with the driver, then runs the tasks it is given —
//! read an exact Kafka offset range, decode, run the job's SQL, write Parquet data files —
//! and returns the data files' metadata. It never commits anything.

mod error;
mod flight;
mod metrics;
mod prepared;
mod registration;
mod rewrite;
mod service;
mod shuffle_store;
mod source;
mod state;
mod task;
mod writer;

pub use error::{Error, Result};
pub use service::run;
pub use state::cache::DEFAULT_STATE_CACHE_BYTES;

use std::net::SocketAddr;
use std::time::Duration;

/// Default task slots per executor.
pub const DEFAULT_TASK_SLOTS: u32 = 2;
/// Default bound on map outputs kept in memory.
pub const DEFAULT_SHUFFLE_MEMORY_BYTES: usize = 512 << 20;
/// How often an executor heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// Everything an executor needs to start.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The driver's gRPC URL, e.g. `http://127.0.0.1:50051`.
    pub driver_url: String,
    /// Where to listen for tasks; port 0 picks a free one.
    pub bind: SocketAddr,
    /// Where to serve shuffle outputs over Arrow Flight; port 0 picks a free one.
    pub flight_bind: SocketAddr,
    /// Map outputs kept in memory; beyond it they spill to `spill_dir`.
    pub shuffle_memory_bytes: usize,
    /// Where map outputs spill (a `sluice-shuffle` directory under the system temp dir
    /// when absent).
    pub spill_dir: Option<std::path::PathBuf>,
    /// Where to serve /healthz, /readyz and /metrics; port 0 picks a free one.
    pub http_bind: SocketAddr,
    /// Host the driver dials back; the bind address's IP when absent.
    pub advertise_host: Option<String>,
    pub task_slots: u32,
    /// Stable id; a fresh one per process when absent.
    pub executor_id: Option<String>,
    /// Idle Kafka consumers stay on their partition and fetch ahead, so the partition's
    /// next range is read from memory (up to 16 MiB buffered per partition).
    pub kafka_read_ahead: bool,
    /// The token presented to the driver (its `--auth-token-file`); none when the driver
    /// runs without authentication.
    pub driver_token: sluice_proto::auth::BearerToken,
    /// The tokens the executor's task API and Flight server accept (the same file), and
    /// the first of them presented to other executors; none: both are open.
    pub accepted_tokens: Option<Vec<String>>,
    /// TLS of the task API, the Flight server and the calls to the driver and to other
    /// executors; none by default.
    pub tls: sluice_proto::tls::Tls,
    /// Bytes of decoded state files kept in memory for the next batch that reads them.
    pub state_cache_bytes: u64,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            driver_url: "http://127.0.0.1:50051".into(),
            driver_token: Default::default(),
            accepted_tokens: None,
            tls: sluice_proto::tls::Tls::none(),
            bind: "127.0.0.1:0".parse().expect("valid address"),
            flight_bind: "127.0.0.1:0".parse().expect("valid address"),
            shuffle_memory_bytes: DEFAULT_SHUFFLE_MEMORY_BYTES,
            spill_dir: None,
            http_bind: "127.0.0.1:0".parse().expect("valid address"),
            advertise_host: None,
            task_slots: DEFAULT_TASK_SLOTS,
            executor_id: None,
            kafka_read_ahead: true,
            state_cache_bytes: DEFAULT_STATE_CACHE_BYTES,
        }
    }
}
