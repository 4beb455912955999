//! Telling a task that crashed its executor from one that merely failed, so that one
//! poisonous input cannot take down the fleet executor by executor.
//!
//! An attempt counts as a crash when the task panicked (the executor reports it and keeps
//! serving) or when its call broke off mid-flight and the executor does not answer a
//! probe right after (the process died). A call refused at connect time
//! never reached the executor and a call that timed out may be a paused executor: neither
//! counts. See docs/architecture.md, "Crash containment".

use std::time::Duration;

use sluice_kafka::offsets::OffsetRange;
use sluice_proto::v1::executor_client::ExecutorClient;
use sluice_proto::v1::ReleaseShuffleRequest;

/// Crashes of one task's attempts after which the driver stops handing the task out and
/// fails the batch.
pub const MAX_TASK_CRASHES: u32 = 2;

/// How long the probe waits for the executor's port.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a failed call means the executor process died while running the task.
pub async fn executor_died(address: &str, status: &tonic::Status) -> bool {
    use tonic::Code;
    let broke_off = matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    );
    if !broke_off || connection_refused(status) {
        return false;
    }
    !answers(address).await
}

/// Whether the call failed because nothing listened at the executor's address: the task
/// was never delivered.
fn connection_refused(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = error.source();
    }
    status.message().contains("Connection refused")
}

/// Whether the executor at `address` answers a no-op call within the probe's timeout on
/// a fresh connection. A dying process may still have its port open for a moment (the
/// kernel accepts connections for it) but cannot answer. Any answer counts, a refusal
/// for want of a token included: the probe carries none.
async fn answers(address: &str) -> bool {
    let probe = async {
        let mut client = ExecutorClient::connect(address.to_string()).await.ok()?;
        match client
            .release_shuffle(ReleaseShuffleRequest::default())
            .await
        {
            Ok(_) => Some(()),
            Err(status) if status.code() == tonic::Code::Unauthenticated => Some(()),
            Err(_) => None,
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Some(_))
    )
}

/// `topic/partition offsets start..end`, comma-separated: what a crashing task reads.
pub fn describe_ranges(ranges: &[OffsetRange]) -> String {
    if ranges.is_empty() {
        return "shuffled rows, no Kafka range".into();
    }
    ranges
        .iter()
        .map(|r| format!("{}/{} offsets {}..{}", r.topic, r.partition, r.start, r.end))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_broken_call_to_a_process_that_does_not_answer_is_a_crash_a_timeout_is_not() {
        // A port that accepts connections but never answers, like a dying process's.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = format!("http://{}", listener.local_addr().unwrap());
        let broke_off = tonic::Status::unknown("h2 protocol error: connection reset");
        assert!(executor_died(&silent, &broke_off).await);
        drop(listener);
        assert!(executor_died(&silent, &broke_off).await);
        let timed_out = tonic::Status::deadline_exceeded("run_task got no answer");
        assert!(!executor_died(&silent, &timed_out).await);
        let refused = tonic::Status::unavailable("tcp connect error: Connection refused");
        assert!(!executor_died(&silent, &refused).await);
    }

    #[test]
    fn ranges_are_named_by_topic_partition_and_offsets() {
        let ranges = [sluice_testkit::partition_range("orders", 5, 9)];
        assert_eq!(describe_ranges(&ranges), "orders/0 offsets 5..9");
    }
}
