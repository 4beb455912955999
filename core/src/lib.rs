//! The core of Sluice that every process and the CLI share: the job spec and its
//! validation, the source schema it implies, ids, the shared error, failpoints, telemetry
//! and the small HTTP and TCP helpers. Nothing here talks to Kafka, Iceberg or etcd.

pub mod avro;
pub mod compaction;
mod durations;
pub mod error;
pub mod failpoint;
pub mod http;
pub mod ids;
pub mod net;
pub mod partition;
pub mod schema;
pub mod secrets;
pub mod spec;
pub mod telemetry;
pub mod window_sql;

pub use error::{Error, Result};
pub use ids::{BatchId, ExecutorId, JobId, TaskId};

/// Milliseconds since the Unix epoch (0 on a clock set before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
