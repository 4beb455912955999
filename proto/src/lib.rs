//! Sluice's gRPC protocol: generated tonic/prost code and nothing else.

/// Version of the driver/executor protocol; a mismatch is refused at registration.
pub const PROTOCOL_VERSION: u32 = 3;

/// Generated messages and services of `sluice.v1`.
pub mod v1 {
    tonic::include_proto!("sluice.v1");
}

/// `TaskFailure.kind` of a task that panicked on its executor (which keeps serving).
pub const TASK_PANICKED: &str = "panic";
