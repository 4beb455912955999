//! Shared building blocks of Sluice: the job spec, the checkpoint store, Kafka helpers,
//! record decoding, the Iceberg sink and telemetry.

pub mod catalog;
pub mod checkpoint;
pub mod data_files;
pub mod decode;
pub mod error;
pub mod failpoint;
pub mod http;
pub mod iceberg_commit;
pub mod iceberg_sink;
pub mod json_guard;
pub mod kafka;
pub mod net;
pub mod offsets;
pub mod plan;
pub mod schema;
pub mod spec;
pub mod storage;
pub mod synthetic;
pub mod telemetry;
pub mod testing;

pub use error::{Error, Result};

/// Identifies a job: its name as given in the spec.
pub type JobId = String;
/// Sequence number of a micro-batch within a job, starting at 0.
pub type BatchId = i64;
