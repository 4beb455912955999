//! A paused leader never commits. Two drivers on etcd, two executors: the leader stalls
//! at one step of batch 3 (a failpoint; in one test also batch 4, run while 3 commits,
//! at a step of its own), is paused there with a real SIGSTOP (as a long
//! GC pause, a frozen VM or a partition looks to it), the standby takes over and commits
//! later batches while the old leader is still paused, then the old leader is resumed.
//! Afterwards every (partition, offset) is in the table exactly once, every snapshot's
//! files are readable, no file is left behind, the old leader committed nothing after the
//! pause, and it stands by.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_integration_tests::check::FILTER_SQL;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 16_000;
const PARTITIONS: i32 = 4;
/// The batch the leader is paused in.
const PAUSED_BATCH: i64 = 3;
const AVAILABLE_NOW: &str = "{available_now: true}";

/// Pauses the leader once batch `PAUSED_BATCH` stalls at `step` and, with `next_step`,
/// once the batch after it (run while it commits) stalls at `next_step` too. The job runs
/// on `trigger`; a `processing_time` job is stopped once it committed every record.
async fn paused_leader_commits_nothing(step: &str, next_step: Option<&str>, trigger: &str) {
    // The batch before the paused one is checkpointed first: it may be committing while the
    // paused one runs, and a process stopped inside a SQLite transaction would hold the
    // test catalog's lock (see docs/guarantees.md, "What is not guaranteed").
    let settled = format!("{}@{}", failpoint::CHECKPOINT_WRITTEN, PAUSED_BATCH - 1);
    let mut stall = format!("{settled}=sleep:1,{step}@{PAUSED_BATCH}=sleep:3000");
    if let Some(next_step) = next_step {
        stall += &format!(",{next_step}@{}=sleep:3000", PAUSED_BATCH + 1);
    }
    let mut cluster = TestCluster::start_with_first_driver_env(
        "orders",
        PARTITIONS,
        2,
        2,
        &[(FAILPOINTS_ENV, stall.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(cluster.leader().await, Some(0), "the armed driver leads");
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let mut name = format!("paused-{}", step.replace('_', "-"));
    if next_step.is_some() {
        name += "-and-next";
    }
    let streaming = trigger.contains("processing_time");
    if streaming {
        name += "-streaming";
    }
    // Compaction off: the test reads which leader wrote each batch's files.
    let spec = TestCluster::without_compaction(&cluster.spec(
        &name,
        "orders",
        FILTER_SQL,
        trigger,
        "    max_offsets_per_trigger: 2000",
    ));
    let job = cluster.submit(&spec).await.unwrap();
    for (point, batch) in [
        (failpoint::CHECKPOINT_WRITTEN, PAUSED_BATCH - 1),
        (step, PAUSED_BATCH),
    ] {
        cluster
            .wait_for_log(
                &format!("failpoint {point} hit at batch {batch}"),
                Duration::from_secs(120),
            )
            .await
            .unwrap();
    }
    if let Some(next_step) = next_step {
        cluster
            .wait_for_log(
                &format!("failpoint {next_step} hit at batch {}", PAUSED_BATCH + 1),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
    }
    cluster.signal_driver(0, Signal::SIGSTOP).unwrap();
    let paused = Instant::now();
    if next_step.is_some() {
        // Read before the lease runs out: both batches are logged, neither checkpointed.
        let (logged, checkpointed) = cluster.logged_and_checkpointed(&job).await.unwrap();
        assert_eq!(
            (logged, checkpointed),
            (PAUSED_BATCH + 1, PAUSED_BATCH - 1),
            "two batches in flight at the pause\n{}",
            cluster.logs_tail(60)
        );
    }

    // The standby takes over and the executors follow it while the old leader sleeps.
    let progressed = || async {
        let status = cluster.status_at(1, &job).await;
        status.is_ok_and(|s| s.last_committed_batch > PAUSED_BATCH)
    };
    cluster
        .wait_until(
            Duration::from_secs(60),
            "progress while the old leader is paused",
            progressed,
        )
        .await
        .unwrap();
    eprintln!(
        "the new leader committed batch {} {:?} after the pause",
        PAUSED_BATCH + 1,
        paused.elapsed()
    );
    assert_eq!(cluster.leader().await, Some(1));

    cluster.signal_driver(0, Signal::SIGCONT).unwrap();
    // The old leader woke up deposed: it stands by and does not serve.
    let standing_by = || async { cluster.http_get(0, "/readyz").map(|r| r.0).ok() == Some(503) };
    cluster
        .wait_until(
            Duration::from_secs(30),
            "standby /readyz from the old leader",
            standing_by,
        )
        .await
        .unwrap();
    // Nor does its API: a status (or a stop) sent to it now would be a deposed driver's.
    let answered = tokio::time::timeout(Duration::from_secs(10), cluster.status_at(0, &job)).await;
    assert!(
        !answered.is_ok_and(|status| status.is_ok()),
        "the deposed leader still answers calls\n{}",
        cluster.logs_tail(20)
    );
    if streaming {
        let last_batch = (EVENTS / 2000) as i64 - 1;
        cluster
            .wait_until(
                Duration::from_secs(60),
                "every record committed",
                || async {
                    let status = cluster.status_at(1, &job).await;
                    status.is_ok_and(|s| s.last_committed_batch >= last_batch)
                },
            )
            .await
            .unwrap();
        if let Err(e) = cluster.stop_and_wait(&job).await {
            panic!("stop: {e}\n{}", cluster.logs_tail(150));
        }
        cluster.assert_exactly_once(&spec, EVENTS, PARTITIONS).await;
    } else {
        cluster
            .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
            .await;
    }

    // Which leader wrote each committed file: the paused one may have committed only the
    // batches it finished before the pause.
    let origins = cluster.committed_file_origins(&spec).await.unwrap();
    let old_term = origins
        .iter()
        .find(|(batch, _, _)| *batch == 0)
        .map(|(_, term, _)| *term)
        .expect("batch 0 has files");
    let committed_before_pause = if step == failpoint::SNAPSHOT_COMMITTED {
        PAUSED_BATCH
    } else {
        PAUSED_BATCH - 1
    };
    for (batch, term, _) in &origins {
        if *batch > committed_before_pause {
            assert_ne!(
                *term,
                old_term,
                "batch {batch} was committed by the paused leader\n{}",
                cluster.logs_tail(40)
            );
        }
    }
    assert!(
        cluster.driver_running(0),
        "the old leader stays up as a standby"
    );
    assert_eq!(cluster.leader().await, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_after_logging_the_plan_commits_nothing() {
    paused_leader_commits_nothing(failpoint::PLAN_LOGGED, None, AVAILABLE_NOW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_while_tasks_run_commits_nothing() {
    paused_leader_commits_nothing(failpoint::TASK_FINISHED, None, AVAILABLE_NOW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_with_files_written_before_the_commit_commits_nothing() {
    paused_leader_commits_nothing(failpoint::FILES_WRITTEN, None, AVAILABLE_NOW).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_after_the_commit_before_the_checkpoint_commits_nothing_more() {
    paused_leader_commits_nothing(failpoint::SNAPSHOT_COMMITTED, None, AVAILABLE_NOW).await;
}

/// Two batches in flight: the leader committed batch 3's snapshot and wrote batch 4's
/// files (run while 3 commits) when it is paused. The new leader records 3, re-runs 4,
/// and deletes the paused leader's files of 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_paused_with_the_next_batch_written_commits_nothing_more() {
    paused_leader_commits_nothing(
        failpoint::SNAPSHOT_COMMITTED,
        Some(failpoint::FILES_WRITTEN),
        AVAILABLE_NOW,
    )
    .await;
}

/// The same with a stream behind its 10 ms trigger: a backlog is read with two batches in
/// flight too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_leader_paused_with_the_next_batch_written_commits_nothing_more() {
    paused_leader_commits_nothing(
        failpoint::SNAPSHOT_COMMITTED,
        Some(failpoint::FILES_WRITTEN),
        "{processing_time: 10ms}",
    )
    .await;
}
