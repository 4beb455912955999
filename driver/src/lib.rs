//! The Sluice driver: accepts jobs, plans each micro-batch from the checkpoint and Kafka's
//! latest offsets, runs its tasks on executors, and commits the batch to Iceberg and the
//! checkpoint store exactly once. See docs/architecture.md, "The life of a batch".

mod batch;
pub mod checkpoint;
mod compaction;
mod crash;
mod error;
mod http;
mod job;
mod leadership;
mod manager;
mod planner;
mod progress;
mod protocol;
mod registry;
mod scheduler;
mod service;
mod source;

pub use error::{Error, Result};
pub use leadership::run;
pub use protocol::{
    BatchPlan, Checkpoint, EventTimes, SourceCheckpoint, SourcePosition, SourceRead, WatermarkRule,
    WatermarkView,
};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Executors silent for longer than this are declared lost.
pub const DEFAULT_EXECUTOR_TIMEOUT: Duration = Duration::from_secs(10);

/// Default deadline of one task attempt on an executor.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(600);

/// Default lifetime of the leader lease.
pub const DEFAULT_LEADER_LEASE: Duration = Duration::from_secs(3);

/// Everything a driver needs to start.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// gRPC listen address for executors and clients.
    pub bind: SocketAddr,
    /// HTTP listen address for probes, metrics and the status page.
    pub http_bind: SocketAddr,
    /// etcd endpoints; empty selects the embedded store at `embedded_store`.
    pub etcd_endpoints: Vec<String>,
    /// File of the embedded checkpoint store.
    pub embedded_store: PathBuf,
    pub executor_timeout: Duration,
    /// Lifetime of the leader lease in etcd: how soon a standby takes over a dead leader.
    pub leader_lease: Duration,
    /// Deadline of one task attempt on an executor.
    pub task_timeout: Duration,
    /// Bearer tokens a gRPC call must present; `None` accepts every call.
    pub auth_tokens: Option<Vec<String>>,
    /// Running jobs at most; further submissions are refused.
    pub max_jobs: usize,
    /// TLS of the gRPC API and of the calls to executors; none by default.
    pub tls: sluice_proto::tls::Tls,
}

/// Running jobs a driver accepts unless told otherwise.
pub const DEFAULT_MAX_JOBS: usize = 100;

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            bind: "127.0.0.1:50051".parse().expect("valid address"),
            http_bind: "127.0.0.1:8080".parse().expect("valid address"),
            etcd_endpoints: vec![],
            embedded_store: PathBuf::from("sluice-data/checkpoints.json"),
            executor_timeout: DEFAULT_EXECUTOR_TIMEOUT,
            leader_lease: DEFAULT_LEADER_LEASE,
            task_timeout: DEFAULT_TASK_TIMEOUT,
            auth_tokens: None,
            max_jobs: DEFAULT_MAX_JOBS,
            tls: sluice_proto::tls::Tls::none(),
        }
    }
}
