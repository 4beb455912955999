//! Fault injection: a process is killed (by an armed failpoint, which aborts it like
//! SIGKILL) at every step of the batch lifecycle; afterwards the table holds every input
//! record exactly once and no uncommitted file is left in the table location.

use std::time::Duration;

use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_integration_tests::check::FILTER_SQL;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 20_000;
const PARTITIONS: i32 = 4;
/// Four batches of 5,000 offsets; the failpoints fire in batch 1.
const BATCH: &str = "    max_offsets_per_trigger: 5000";

/// Two drivers and three executors. The leader is armed to die at `point` in batch 1; the
/// standby takes over and the job completes exactly once.
async fn driver_crash_at(point: &str) {
    let mut cluster = TestCluster::start_with_drivers("orders", PARTITIONS, 3, 2)
        .await
        .unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    // Make driver 0 the armed leader and driver 1 an unarmed standby.
    cluster.kill_driver_at(0);
    cluster.kill_driver_at(1);
    cluster.driver_env = vec![(FAILPOINTS_ENV.to_string(), format!("{point}@1"))];
    cluster.start_driver_at(0).unwrap();
    cluster.wait_for_driver().await.unwrap();
    cluster.driver_env.clear();
    cluster.start_driver_at(1).unwrap();
    assert_eq!(cluster.leader().await, Some(0));
    let name = format!("crash-{}", point.replace('_', "-"));
    let spec = cluster.spec(&name, "orders", FILTER_SQL, "{available_now: true}", BATCH);
    let job = cluster.submit(&spec).await.unwrap();
    let exit = cluster
        .wait_driver_exit(Duration::from_secs(120))
        .await
        .unwrap();
    assert!(!exit.success(), "the driver must die at {point}");
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert_eq!(cluster.leader().await, Some(1), "the standby took over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_after_plan_logged_reruns_the_logged_ranges() {
    driver_crash_at(failpoint::PLAN_LOGGED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_while_tasks_run_loses_nothing() {
    driver_crash_at(failpoint::TASK_FINISHED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_after_files_written_commits_once() {
    driver_crash_at(failpoint::FILES_WRITTEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_between_snapshot_and_checkpoint_does_not_commit_twice() {
    driver_crash_at(failpoint::SNAPSHOT_COMMITTED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_after_checkpoint_continues_with_the_next_batch() {
    driver_crash_at(failpoint::CHECKPOINT_WRITTEN).await;
}

/// Executor 0 dies at `point` in batch 1; its task is retried on executor 1.
async fn executor_crash_at(point: &str) {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
    cluster
        .start_executor(&[(FAILPOINTS_ENV, &format!("{point}@1"))])
        .unwrap();
    cluster.start_executor(&[]).unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let name = format!("crash-{}", point.replace('_', "-"));
    let spec = cluster.spec(&name, "orders", FILTER_SQL, "{available_now: true}", BATCH);
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert!(
        cluster.executor_exited(0),
        "executor 0 must have died at {point}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_after_reading_is_replaced_by_another() {
    executor_crash_at(failpoint::EXECUTOR_RECORDS_READ).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_after_writing_files_leaves_no_garbage() {
    executor_crash_at(failpoint::EXECUTOR_FILES_WRITTEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_sigterm_commits_the_running_batch_and_resumes_after_restart() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        "sigterm",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        BATCH,
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_for(&job, Duration::from_secs(120), |s| {
            s.last_committed_batch >= 0
        })
        .await
        .unwrap();
    let exit = cluster.terminate_driver(Duration::from_secs(60)).unwrap();
    assert!(exit.success(), "a SIGTERM'd driver exits cleanly: {exit}");
    // Whatever batch was running committed: no batch is left planned but unconfirmed, and
    // the table's last batch is the checkpointed one.
    let (logged, checkpointed) = cluster.logged_and_checkpointed(&job).await.unwrap();
    assert!(checkpointed >= 0);
    assert_eq!(logged, checkpointed, "batch {logged} was left half-done");
    let committed = cluster.committed_batches(&spec).await.unwrap();
    assert_eq!(
        committed.last().map(String::as_str),
        Some(checkpointed.to_string().as_str())
    );
    cluster.start_driver().unwrap();
    cluster.wait_for_driver().await.unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_sigterm_finishes_its_running_task_first() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
    // Executor 0 stalls 3 s inside its batch-1 tasks; it gets SIGTERM meanwhile.
    let stall = format!("{}@1=sleep:3000", failpoint::EXECUTOR_RECORDS_READ);
    cluster
        .start_executor(&[(FAILPOINTS_ENV, stall.as_str())])
        .unwrap();
    cluster.start_executor(&[]).unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    // Compaction off: the test reads which attempt wrote batch 1's files.
    let spec = TestCluster::without_compaction(&cluster.spec(
        "sigterm-executor",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        BATCH,
    ));
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_for_log(
            "failpoint executor_records_read hit at batch 1",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let exit = cluster
        .terminate_executor(0, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(exit.success(), "a SIGTERM'd executor exits cleanly: {exit}");
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    // The stalled batch-1 tasks finished and reported: every committed file of batch 1
    // comes from a first attempt. (Tasks of later batches sent before the driver noticed
    // the executor left are retried.)
    let origins = cluster.committed_file_origins(&spec).await.unwrap();
    let batch_one: Vec<_> = origins.iter().filter(|(batch, _, _)| *batch == 1).collect();
    assert!(!batch_one.is_empty(), "batch 1 has files: {origins:?}");
    assert!(
        batch_one.iter().all(|(_, _, attempt)| *attempt == 1),
        "batch 1 tasks were retried: {batch_one:?}"
    );
}
