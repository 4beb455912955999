//! A stream that goes quiet still closes its windows: a `processing_time` job whose
//! checkpointed watermark is ahead of the one its state was last processed under runs a
//! batch without records that writes what that watermark closes (windows, sessions) and
//! drops what it forgets (deduplicated keys), then runs nothing more while nothing
//! changes. A partition without records holds the watermark back unless
//! `watermark.idle_timeout` leaves it out; `advance_when_idle` lets the watermark follow
//! processing time. Such a batch commits exactly once under a paused or killed leader.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_core::spec::JobSpec;
use sluice_integration_tests::differential::{query_source, source_batches};
use sluice_integration_tests::readers::row_counts_by_other_readers;
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_proto::v1::{BatchProgress, JobStatus};

const T: i64 = 1_700_000_000_000;
const HOUR_MS: i64 = 3_600_000;
const TRIGGER: &str = "{processing_time: 300ms}";

const WINDOW_SQL: &str = "SELECT window_start, window_end, customer_id, count(*) AS n FROM source \
     GROUP BY tumble(ts, INTERVAL '10 seconds'), customer_id";

/// The same windows over all records as one batch.
const EXPECTED_WINDOWS_SQL: &str =
    "SELECT date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start, \
     customer_id, count(*) AS n FROM source GROUP BY 1, 2";

/// (window start in ms, customer) -> count.
type Windows = BTreeMap<(i64, i64), i64>;

fn order(i: usize, customer: i64, ts: i64) -> String {
    format!(
        r#"{{"order_id":"o-{i}","customer_id":{customer},"product_id":1,"amount":1.0,"country":"DE","ts":{ts}}}"#
    )
}

fn millis(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = arrow::compute::cast(
        batch.column_by_name(name).unwrap(),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )
    .unwrap();
    column
        .as_primitive::<TimestampMillisecondType>()
        .values()
        .to_vec()
}

fn int64s(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column =
        arrow::compute::cast(batch.column_by_name(name).unwrap(), &DataType::Int64).unwrap();
    column.as_primitive::<Int64Type>().values().to_vec()
}

/// Reads window rows; a window twice fails.
fn windows_of(batches: &[RecordBatch]) -> Windows {
    let mut out = Windows::new();
    for batch in batches {
        let keys = millis(batch, "window_start")
            .into_iter()
            .zip(int64s(batch, "customer_id"));
        for (key, n) in keys.zip(int64s(batch, "n")) {
            assert!(out.insert(key, n).is_none(), "window {key:?} written twice");
        }
    }
    out
}

/// The windows single-process DataFusion computes over every record of `spec`'s topic
/// whose end is at or below `closed_by`.
async fn expected_windows(cluster: &TestCluster, spec: &str, closed_by: i64) -> Windows {
    let mut parsed = JobSpec::parse(spec).unwrap();
    parsed.window = None;
    let source = source_batches(cluster, &parsed).unwrap();
    windows_of(&query_source(EXPECTED_WINDOWS_SQL, source).await.unwrap())
        .into_iter()
        .filter(|((start, _), _)| start + 10_000 <= closed_by)
        .collect()
}

/// Whether the job's last committed batch left the watermark at `ms`.
fn watermark_is(status: &JobStatus, ms: i64) -> bool {
    status
        .recent_batches
        .last()
        .is_some_and(|b| b.watermark_ms == Some(ms))
}

/// Waits until the job's last committed batch left the watermark at `ms`; returns that
/// batch's progress.
async fn wait_for_watermark(cluster: &TestCluster, job: &str, ms: i64) -> BatchProgress {
    let status = cluster
        .wait_for(job, Duration::from_secs(30), |s| watermark_is(s, ms))
        .await;
    let status = status.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail(40)));
    status.recent_batches.last().cloned().unwrap()
}

/// Waits until the job committed a batch that read no records and `done` holds for its
/// status; returns that status.
async fn wait_for_quiet_batch(
    cluster: &TestCluster,
    job: &str,
    done: impl Fn(&JobStatus) -> bool,
) -> JobStatus {
    let status = cluster
        .wait_for(job, Duration::from_secs(90), |s| {
            s.recent_batches.last().is_some_and(|b| b.input_rows == 0) && done(s)
        })
        .await;
    status.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail(40)))
}

/// Checks that the job commits nothing more while nothing arrives: ten triggers later
/// the same batch is its last, and the table has no new snapshot.
async fn assert_nothing_more_committed(cluster: &TestCluster, job: &str, spec: &str) {
    let before = cluster.status(job).await.unwrap().last_committed_batch;
    let snapshots = cluster.committed_batches(spec).await.unwrap().len();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = cluster.status(job).await.unwrap();
    assert_eq!(
        after.last_committed_batch,
        before,
        "an idle stream with nothing to close committed batches: {:?}",
        after.recent_batches.last()
    );
    assert_eq!(
        cluster.committed_batches(spec).await.unwrap().len(),
        snapshots
    );
}

/// The scenario of the live dashboard whose traffic stops: out-of-order events within the
/// delay, then one event per partition an hour of event time later, then nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_writes_every_window_its_watermark_closes_and_then_nothing() {
    const PARTITIONS: i32 = 4;
    const CUSTOMERS: i64 = 8;
    let cluster = TestCluster::start("clicks", PARTITIONS, 2).await.unwrap();
    let mut rng = StdRng::seed_from_u64(20_261_207);
    // 12,000 events 20 ms of event time apart, up to 4 s out of order (delay 5 s).
    let mut per_partition: Vec<Vec<String>> = vec![vec![]; PARTITIONS as usize];
    for i in 0..12_000usize {
        let ts = T + i as i64 * 20 - rng.gen_range(0..4_000);
        per_partition[rng.gen_range(0..PARTITIONS) as usize].push(order(
            i,
            rng.gen_range(0..CUSTOMERS),
            ts,
        ));
    }
    for (partition, values) in per_partition.iter().enumerate() {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        cluster
            .produce_raw("clicks", partition as i32, &values)
            .unwrap();
    }
    let spec = cluster.spec(
        "quiet-windows",
        "clicks",
        WINDOW_SQL,
        TRIGGER,
        "    watermark: {column: ts, delay: 5s}\n    max_offsets_per_trigger: 2500",
    );
    let job = cluster.submit(&spec).await.unwrap();
    // An hour later, one event per partition (four customers), then nothing.
    let later = T + HOUR_MS;
    for partition in 0..PARTITIONS {
        let value = order(20_000 + partition as usize, partition as i64, later);
        cluster.produce_raw("clicks", partition, &[&value]).unwrap();
    }
    let closed_by = later - 5_000;
    let status = wait_for_quiet_batch(&cluster, &job, |s| watermark_is(s, closed_by)).await;
    let batches = &status.recent_batches;
    let (quiet, last_read) = (&batches[batches.len() - 1], &batches[batches.len() - 2]);
    assert!(
        last_read.input_rows > 0 && quiet.batch_id == last_read.batch_id + 1,
        "the batch after the one that read the last records closes the windows: {batches:?}"
    );
    assert!(quiet.output_rows > 0);
    // The four customers' windows of the hour-later events are all that stays open.
    assert_eq!(quiet.state_rows, 4);
    let expected = expected_windows(&cluster, &spec, closed_by).await;
    assert!(expected.len() >= 150, "{} windows", expected.len());
    assert_eq!(
        expected.keys().map(|(start, _)| *start).max(),
        Some(T + 230_000),
        "the last on-time windows are expected"
    );
    assert_eq!(
        windows_of(&cluster.table_rows(&spec).await.unwrap()),
        expected
    );
    let windows = expected.len() as u64;
    assert_eq!(
        row_counts_by_other_readers(&cluster, "test", "quiet_windows"),
        (windows, windows),
        "pyiceberg and DuckDB read the same windows"
    );
    assert_nothing_more_committed(&cluster, &job, &spec).await;

    // The status and the metrics show the watermark, what sets it and the open state.
    let metric = |series: String| {
        let cluster = &cluster;
        async move { cluster.driver_metric(&series).await.unwrap() }
    };
    let rows = metric(format!(r#"sluice_state_rows{{job="{job}"}}"#)).await;
    assert_eq!(rows, 4.0);
    let watermark = metric(format!(r#"sluice_watermark_seconds{{job="{job}"}}"#)).await;
    assert_eq!((watermark * 1000.0).round() as i64, closed_by);
    assert!(quiet.watermark_partition.starts_with("clicks/"));
    let (held_topic, held_partition) = quiet.watermark_partition.split_once('/').unwrap();
    let held = metric(format!(
        r#"sluice_watermark_partition{{job="{job}",topic="{held_topic}",partition="{held_partition}"}}"#
    ))
    .await;
    assert_eq!(held, 1.0);
    cluster.stop_and_wait(&job).await.unwrap();
}

/// Sessions close and remembered keys are forgotten without new records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_sessions_close_and_remembered_keys_are_dropped_without_new_records() {
    const PARTITIONS: i32 = 2;
    let cluster = TestCluster::start("visits", PARTITIONS, 2).await.unwrap();
    // Customer c visits at 0, 2, 4 s (+ c s): one session each, closing 10 s after its
    // last record. Order o-0 is sent twice.
    let mut records = vec![];
    for customer in 0..6i64 {
        for step in 0..3 {
            let ts = T + customer * 1_000 + step * 2_000;
            records.push(order(records.len(), customer, ts));
        }
    }
    records.push(order(0, 0, T));
    let half = records.len() / 2;
    for (partition, values) in [&records[..half], &records[half..]].iter().enumerate() {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        cluster
            .produce_raw("visits", partition as i32, &values)
            .unwrap();
    }
    let sessions = cluster.spec(
        "quiet-sessions",
        "visits",
        "SELECT customer_id, window_start, window_end, count(*) AS n FROM source \
         GROUP BY session(ts, INTERVAL '10 seconds'), customer_id",
        TRIGGER,
        "    watermark: {column: ts, delay: 1s}",
    );
    let dedup = cluster.spec(
        "quiet-dedup",
        "visits",
        "SELECT order_id, customer_id FROM source",
        TRIGGER,
        "    watermark: {column: ts, delay: 1s}\n    dedup: {key: [order_id], within: 1s}",
    );
    let sessions_job = cluster.submit(&sessions).await.unwrap();
    let dedup_job = cluster.submit(&dedup).await.unwrap();
    // Both jobs read the records before the late ones arrive.
    for job in [&sessions_job, &dedup_job] {
        cluster
            .wait_for(job, Duration::from_secs(60), |s| {
                s.last_committed_batch >= 0
            })
            .await
            .unwrap();
    }
    // One record per partition an hour later moves the watermark past everything.
    let later = T + HOUR_MS;
    for partition in 0..PARTITIONS {
        let value = order(100 + partition as usize, 100 + partition as i64, later);
        cluster.produce_raw("visits", partition, &[&value]).unwrap();
    }
    let closed_by = later - 1_000;
    let moved = |s: &JobStatus| watermark_is(s, closed_by);

    let status = wait_for_quiet_batch(&cluster, &sessions_job, moved).await;
    let quiet = status.recent_batches.last().unwrap();
    assert_eq!(quiet.state_rows, 2, "the two hour-later sessions stay open");
    let mut written = BTreeMap::new();
    for batch in cluster.table_rows(&sessions).await.unwrap() {
        let rows = int64s(&batch, "customer_id")
            .into_iter()
            .zip(millis(&batch, "window_start"))
            .zip(millis(&batch, "window_end"))
            .zip(int64s(&batch, "n"));
        for (((customer, start), end), n) in rows {
            assert!(written.insert(customer, (start, end, n)).is_none());
        }
    }
    let expected: BTreeMap<i64, (i64, i64, i64)> = (0..6i64)
        .map(|c| {
            let start = T + c * 1_000;
            let n = if c == 0 { 4 } else { 3 };
            (c, (start, start + 4_000 + 10_000, n))
        })
        .collect();
    assert_eq!(written, expected);
    assert_nothing_more_committed(&cluster, &sessions_job, &sessions).await;

    let status = wait_for_quiet_batch(&cluster, &dedup_job, |s| {
        moved(s) && s.recent_batches.last().is_some_and(|b| b.state_rows == 2)
    })
    .await;
    let quiet = status.recent_batches.last().unwrap();
    assert_eq!(quiet.output_rows, 0, "forgetting keys writes no rows");
    let orders = cluster.row_count(&dedup).await.unwrap();
    assert_eq!(orders, 18 + 2, "each order once");
    // The current snapshot is the quiet batch's, which added no file.
    assert_eq!(
        row_counts_by_other_readers(&cluster, "test", "quiet_dedup"),
        (20, 20)
    );
    // Only the hour-later keys' state is left on disk.
    let state_dir = cluster
        .dir
        .path()
        .join("warehouse/test/quiet_dedup/sluice-state");
    let state_bytes: u64 = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(state_bytes, quiet.state_bytes);
    assert_nothing_more_committed(&cluster, &dedup_job, &dedup).await;
    for job in [&sessions_job, &dedup_job] {
        cluster.stop_and_wait(job).await.unwrap();
    }
}

/// A job's counter (`sluice_<name>_total`) on the leader, 0 before its first batch.
async fn counter(cluster: &TestCluster, name: &str, job: &str) -> u64 {
    let series = format!(r#"sluice_{name}_total{{job="{job}"}}"#);
    cluster.driver_metric(&series).await.unwrap_or(0.0) as u64
}

/// Waits until `job`'s counter `name` reaches `at_least`.
async fn wait_for_counter(cluster: &TestCluster, job: &str, name: &str, at_least: u64) {
    let reached = || async { counter(cluster, name, job).await >= at_least };
    let what = format!("{job}: {name} reaches {at_least}");
    let waited = cluster
        .wait_until(Duration::from_secs(60), &what, reached)
        .await;
    waited.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail(40)));
}

/// One partition of four stops receiving records. Without `idle_timeout` it holds the
/// watermark back and the status names it; with it the other partitions' windows close;
/// with `advance_when_idle` as well, the watermark follows processing time once all are
/// idle, and records that come after are late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_partition_holds_the_watermark_back_unless_its_timeout_leaves_it_out() {
    const PARTITIONS: i32 = 4;
    let cluster = TestCluster::start("events", PARTITIONS, 2).await.unwrap();
    // One record per 100 ms of event time per partition, four customers.
    let produce = |partitions: std::ops::Range<i32>, seconds: std::ops::Range<i64>| {
        let mut count = 0;
        for partition in partitions {
            let values: Vec<String> = (seconds.start * 10..seconds.end * 10)
                .map(|tenth| {
                    let i = (partition as i64 * 100_000 + tenth) as usize;
                    order(i, tenth % 4, T + tenth * 100)
                })
                .collect();
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            cluster.produce_raw("events", partition, &values).unwrap();
            count += values.len() as u64;
        }
        count
    };
    let first = produce(0..PARTITIONS, 0..30);
    let watermark = |extra: &str| format!("    watermark: {{column: ts, delay: 1s{extra}}}");
    let strict = cluster.spec("idle-strict", "events", WINDOW_SQL, TRIGGER, &watermark(""));
    let skipping = cluster.spec(
        "idle-skipping",
        "events",
        WINDOW_SQL,
        TRIGGER,
        &watermark(", idle_timeout: 3s"),
    );
    let following = cluster.spec(
        "idle-following",
        "events",
        WINDOW_SQL,
        TRIGGER,
        &watermark(", idle_timeout: 3s, advance_when_idle: 1h"),
    );
    let specs = [&strict, &skipping, &following];
    let mut jobs = vec![];
    for spec in specs {
        jobs.push(cluster.submit(spec).await.unwrap());
    }
    for job in &jobs {
        wait_for_counter(&cluster, job, "input_rows", first).await;
    }
    // Every partition is idle for longer than the timeout. Then partition 3 gets nothing
    // more, and the others a minute more of event time, 5 s at a time: first a record at
    // the event time they stopped at, so that they all count again before any of them
    // moves the watermark on, then often enough never to be idle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = 0;
    for partition in 0..3 {
        let value = order(900_000 + partition as usize, 0, T + 29_900);
        cluster.produce_raw("events", partition, &[&value]).unwrap();
        second += 1;
    }
    wait_for_counter(&cluster, &jobs[1], "input_rows", first + 3).await;
    for from in (30..90).step_by(5) {
        second += produce(0..3, from..from + 5);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for job in &jobs[..2] {
        wait_for_counter(&cluster, job, "input_rows", first + second).await;
    }

    // Strict: partition 3's last event (29.9 s) holds the watermark at 28.9 s.
    let held_at = T + 28_900;
    let last = wait_for_watermark(&cluster, &jobs[0], held_at).await;
    assert_eq!(last.watermark_partition, "events/3", "the status names it");
    assert!(last.idle_partitions.is_empty());
    let strict_windows = windows_of(&cluster.table_rows(&strict).await.unwrap());
    assert_eq!(
        strict_windows,
        expected_windows(&cluster, &strict, held_at).await
    );
    assert_eq!(
        strict_windows.keys().map(|(start, _)| *start).max(),
        Some(T + 10_000),
        "windows after 20 s wait for partition 3"
    );

    // Skipping: partition 3 is left out; the others' last events (89.9 s) set it.
    let moved_to = T + 88_900;
    let last = wait_for_watermark(&cluster, &jobs[1], moved_to).await;
    assert!(last.idle_partitions.contains(&"events/3".to_string()));
    let skipped = windows_of(&cluster.table_rows(&skipping).await.unwrap());
    assert_eq!(
        skipped,
        expected_windows(&cluster, &skipping, moved_to).await
    );
    assert_eq!(
        skipped.keys().map(|(start, _)| *start).max(),
        Some(T + 70_000)
    );
    let idle = cluster
        .driver_metric(&format!(r#"sluice_idle_partitions{{job="{}"}}"#, jobs[1]))
        .await
        .unwrap();
    assert!(idle >= 1.0);

    // Following: once every partition was idle, the watermark is an hour behind
    // processing time, far past these events: the first records' windows all closed, and
    // the minute that came later is late.
    wait_for_counter(&cluster, &jobs[2], "input_rows", first + second).await;
    assert_eq!(counter(&cluster, "late_records", &jobs[2]).await, second);
    let followed = windows_of(&cluster.table_rows(&following).await.unwrap());
    let mut parsed = JobSpec::parse(&following).unwrap();
    parsed.window = None;
    let source = source_batches(&cluster, &parsed).unwrap();
    // The records before the pause: the first 30 s, without the records that woke
    // partitions (ids from 900,000).
    let without_waking = EXPECTED_WINDOWS_SQL.patched(
        "FROM source",
        "FROM source WHERE CAST(substr(order_id, 3) AS BIGINT) < 900000",
    );
    let first_windows: Windows = windows_of(&query_source(&without_waking, source).await.unwrap())
        .into_iter()
        .filter(|((start, _), _)| *start < T + 30_000)
        .collect();
    assert_eq!(first_windows.len(), 12, "three windows of four customers");
    assert_eq!(followed, first_windows);
    for job in &jobs {
        cluster.stop_and_wait(job).await.unwrap();
    }
}

/// A quiet batch (batch 3: 0 and 2 read records, 1 and 3 close windows) stalls at `step`
/// on the leader, which is then paused or killed; the standby recovers it. Every window
/// is written once, equal to the batch oracle.
async fn quiet_batch_survives_its_leader(step: &str, kill: bool) {
    let stall = format!("{step}@3=sleep:3000");
    let mut cluster = TestCluster::start_with_first_driver_env(
        "taps",
        1,
        2,
        2,
        &[(FAILPOINTS_ENV, stall.as_str())],
    )
    .await
    .unwrap();
    assert_eq!(cluster.leader().await, Some(0), "the armed driver leads");
    let values: Vec<String> = (0..2_000usize)
        .map(|i| order(i, i as i64 % 5, T + i as i64 * 50))
        .collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    cluster.produce_raw("taps", 0, &values).unwrap();
    let name = format!(
        "quiet-{}-{}",
        if kill { "killed" } else { "paused" },
        step.replace('_', "-")
    );
    let spec = TestCluster::without_compaction(&cluster.spec(
        &name,
        "taps",
        WINDOW_SQL,
        TRIGGER,
        "    watermark: {column: ts, delay: 2s}",
    ));
    let job = cluster.submit(&spec).await.unwrap();
    // Batch 1 closes the windows batch 0's records passed.
    let status = wait_for_quiet_batch(&cluster, &job, |s| s.last_committed_batch == 1).await;
    assert_eq!(status.recent_batches[0].input_rows, 2_000);
    let later = T + HOUR_MS;
    cluster
        .produce_raw("taps", 0, &[&order(5_000, 9, later)])
        .unwrap();
    cluster
        .wait_for_log(
            &format!("failpoint {step} hit at batch 3"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    if kill {
        cluster.kill_driver_at(0);
    } else {
        cluster.signal_driver(0, Signal::SIGSTOP).unwrap();
    }
    let closed_by = later - 2_000;
    let recovered = cluster
        .wait_until(
            Duration::from_secs(60),
            "the standby commits batch 3",
            || async {
                cluster
                    .status_at(1, &job)
                    .await
                    .is_ok_and(|s| s.last_committed_batch >= 3)
            },
        )
        .await;
    recovered.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs_tail(60)));
    if !kill {
        cluster.signal_driver(0, Signal::SIGCONT).unwrap();
        let standing_by =
            || async { cluster.http_get(0, "/readyz").map(|r| r.0).ok() == Some(503) };
        cluster
            .wait_until(
                Duration::from_secs(30),
                "the old leader stands by",
                standing_by,
            )
            .await
            .unwrap();
    }
    let status = cluster.status_at(1, &job).await.unwrap();
    let checkpoint = cluster
        .job_log(&job)
        .await
        .unwrap()
        .checkpoint()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(checkpoint.batch_id.get(), 3, "{:?}", status.recent_batches);
    assert_eq!(checkpoint.watermark_ms, Some(closed_by));
    assert_eq!(checkpoint.applied_watermark_ms, Some(closed_by));
    let expected = expected_windows(&cluster, &spec, closed_by).await;
    assert_eq!(expected.len(), 50, "100 s of five customers' 10 s windows");
    assert_eq!(
        windows_of(&cluster.table_rows(&spec).await.unwrap()),
        expected
    );
    let committed = cluster.committed_batches(&spec).await.unwrap();
    sluice_integration_tests::check::assert_unique_batches(&committed);
    assert_eq!(
        committed.len(),
        4,
        "batches 0 to 3, once each: {committed:?}"
    );
    assert!(cluster.uncommitted_files(&spec).await.unwrap().is_empty());
    cluster.stop_and_wait(&job).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_batch_of_a_leader_paused_before_its_commit_is_committed_once() {
    quiet_batch_survives_its_leader(failpoint::FILES_WRITTEN, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_batch_of_a_leader_killed_after_its_commit_is_checkpointed_once() {
    quiet_batch_survives_its_leader(failpoint::SNAPSHOT_COMMITTED, true).await;
}
