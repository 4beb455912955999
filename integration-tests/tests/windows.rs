//! Tumbling event-time windows: a window's row is written once, in the batch that runs
//! after the watermark passed its end, with its count over the records of every batch;
//! state between batches survives the job being resumed, late records are dropped, and
//! only the latest state files remain.

use std::collections::BTreeMap;

use arrow::array::AsArray;
use arrow::datatypes::{DataType, Int64Type, TimeUnit, TimestampMillisecondType};
use sluice_integration_tests::TestCluster;

const T: i64 = 1_700_000_000_000;

fn produce(cluster: &TestCluster, partition: i32, seconds: impl Iterator<Item = i64>) {
    let values: Vec<String> = seconds
        .map(|s| {
            format!(
                r#"{{"order_id":"p{partition}-{s}","customer_id":1,"product_id":1,"amount":1.0,"country":"DE","ts":{}}}"#,
                T + s * 1000
            )
        })
        .collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    cluster.produce_raw("clicks", partition, &values).unwrap();
}

/// The table's rows as window start (s after T) -> count; each window at most once.
async fn windows(cluster: &TestCluster, spec: &str) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for batch in cluster.table_rows(spec).await.unwrap() {
        // Iceberg keeps timestamps in microseconds.
        let starts = arrow::compute::cast(
            batch.column_by_name("window_start").unwrap(),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .unwrap();
        let starts = starts.as_primitive::<TimestampMillisecondType>();
        let counts = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let start = (starts.value(i) - T) / 1000;
            assert!(
                out.insert(start, counts.value(i)).is_none(),
                "window {start} written twice"
            );
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_is_written_once_with_its_count_over_every_batch() {
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    let spec = cluster.spec(
        "windows",
        "clicks",
        "SELECT window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}",
    );
    let round = |range: std::ops::RangeInclusive<i64>| {
        for partition in 0..2 {
            produce(&cluster, partition, range.clone());
        }
    };

    // Each run ends with a batch without records under the final watermark, which writes
    // the windows that watermark closes from the state.
    round(1..=25);
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20)]),
        "windows ending by the final watermark (25 s) are written"
    );

    round(26..=45);
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20), (20, 20), (30, 20)]),
        "windows ending by the next watermark (45 s) are added, with records of both runs"
    );

    round(46..=65);
    produce(&cluster, 0, [5].into_iter());
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20), (20, 20), (30, 20), (40, 20), (50, 20)]),
        "the late record (5 s) does not reopen its window"
    );
    let batches = &status.recent_batches;
    assert_eq!(batches[batches.len() - 2].late_records, 1);
    let last = batches.last().unwrap();
    assert_eq!(last.input_rows, 0, "the flush reads no records");
    // State is bounded by the open windows: the flush ran under a 65 s watermark, so it
    // keeps the window from 60 s on, nothing older, as one partial-aggregate row (its
    // count so far), not its 12 records.
    assert_eq!(last.state_rows, 1);
    assert!(last.state_bytes > 0);
    let state_bytes = cluster
        .driver_metric(r#"sluice_state_bytes{job="windows"}"#)
        .await
        .unwrap();
    assert_eq!(state_bytes, last.state_bytes as f64);
    // The executor that ran the last batch's state task reports the state it wrote.
    let per_executor = format!(r#"sluice_executor_state_bytes{{job="{job}"}}"#);
    let reported: Vec<f64> = (0..2)
        .filter_map(|i| cluster.executor_metric(i, &per_executor).ok())
        .collect();
    assert!(
        reported.contains(&(last.state_bytes as f64)),
        "{reported:?} against {}",
        last.state_bytes
    );
    let (_, page) = cluster.http_get(0, "/").unwrap();
    assert!(
        page.contains(&format!("state {} bytes", last.state_bytes)),
        "the status page shows the state: {page}"
    );

    // Only the state the last batch left remains (files it wrote or carried over).
    let state_dir = cluster
        .dir
        .path()
        .join("warehouse/test/windows/sluice-state");
    let left: Vec<std::fs::Metadata> = std::fs::read_dir(&state_dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .collect();
    assert!(!left.is_empty());
    assert_eq!(
        left.iter().map(|m| m.len()).sum::<u64>(),
        last.state_bytes,
        "{} state files left",
        left.len()
    );
}

/// A `once` job reads its one batch, then flushes what the final watermark closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_once_job_writes_the_windows_its_final_watermark_closes() {
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    for partition in 0..2 {
        produce(&cluster, partition, 1..=25);
    }
    let spec = cluster.spec(
        "windows-once",
        "clicks",
        "SELECT window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end",
        "{once: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}",
    );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    assert_eq!(status.last_committed_batch, 1, "the batch and the flush");
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_query_must_select_the_window_end_and_read_the_stream_once() {
    let cluster = TestCluster::start("clicks", 1, 1).await.unwrap();
    let spec = cluster.spec(
        "no-end",
        "clicks",
        "SELECT window_start, count(*) AS n FROM source GROUP BY window_start",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}",
    );
    let status = cluster.submit(&spec).await.unwrap_err();
    assert!(
        status.message().contains("window_end"),
        "{}",
        status.message()
    );

    // A self-join reads the stream twice: its windows' state could not be carried.
    let self_join = cluster.spec(
        "twice",
        "clicks",
        "SELECT a.window_start, a.window_end, count(*) AS n FROM source a JOIN source b \
         ON a.customer_id = b.customer_id GROUP BY a.window_start, a.window_end",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}",
    );
    let status = cluster.submit(&self_join).await.unwrap_err();
    assert!(
        status.message().contains("may read the stream once")
            && status.message().contains("reads it 2 times"),
        "{}",
        status.message()
    );
}

/// The driver dies in a windowed batch at `point` (`failpoint::FILES_WRITTEN`: its tasks
/// wrote their files and state, nothing is committed; `SNAPSHOT_COMMITTED`: the Iceberg
/// commit is done, the checkpoint is not). With `whole_cluster` every executor is killed
/// as well, and everything restarts. The restarted driver re-runs the batch from the
/// state it started from, or finds it in the table and takes the batch's state (and event
/// times) from its snapshot: no window is lost, counted twice or written twice.
async fn window_state_survives_a_driver_killed_at(point: &str, whole_cluster: bool) {
    let armed = format!("{point}@2");
    let mut cluster = TestCluster::start_with_first_driver_env(
        "clicks",
        2,
        2,
        1,
        &[(sluice_core::failpoint::FAILPOINTS_ENV, &armed)],
    )
    .await
    .unwrap();
    for partition in 0..2 {
        produce(&cluster, partition, 1..=65);
    }
    let spec = cluster.spec(
        "windows-killed",
        "clicks",
        "SELECT window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}\n    max_offsets_per_trigger: 40",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_driver_exit(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    if whole_cluster {
        for i in 0..2 {
            cluster.restart_executor(i).unwrap();
        }
    }
    cluster.start_driver().unwrap();
    cluster.wait_for_driver().await.unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20), (20, 20), (30, 20), (40, 20), (50, 20)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_survives_a_driver_killed_between_commit_and_checkpoint() {
    window_state_survives_a_driver_killed_at(sluice_core::failpoint::SNAPSHOT_COMMITTED, false)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_survives_a_driver_killed_after_the_state_was_written_before_the_commit() {
    window_state_survives_a_driver_killed_at(sluice_core::failpoint::FILES_WRITTEN, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_survives_the_whole_cluster_restarting_mid_batch() {
    window_state_survives_a_driver_killed_at(sluice_core::failpoint::FILES_WRITTEN, true).await;
}

/// An executor dies in the middle of a windowed batch, once after reading its records
/// and once after writing its files (state included): the batch re-runs from the same
/// state on another executor and every window is still written once with its full count.
async fn window_state_survives_an_executor_killed_at(point: &str) {
    let mut cluster = TestCluster::start("clicks", 2, 0).await.unwrap();
    let armed = format!("{point}@2");
    cluster
        .start_executor(&[(sluice_core::failpoint::FAILPOINTS_ENV, &armed)])
        .unwrap();
    for partition in 0..2 {
        produce(&cluster, partition, 1..=65);
    }
    let name = format!("windows-{}", point.replace('_', "-"));
    let spec = cluster.spec(
        &name,
        "clicks",
        "SELECT window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 10s}\n    max_offsets_per_trigger: 40",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_executor_exit(
            0,
            std::time::Duration::from_secs(60),
            &format!("at {point}"),
        )
        .await;
    cluster.start_executor(&[]).unwrap();
    cluster.wait_until_finished(&job).await;
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(0, 18), (10, 20), (20, 20), (30, 20), (40, 20), (50, 20)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_survives_an_executor_killed_after_reading() {
    window_state_survives_an_executor_killed_at(sluice_core::failpoint::EXECUTOR_RECORDS_READ)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_state_survives_an_executor_killed_after_writing_its_files() {
    window_state_survives_an_executor_killed_at(sluice_core::failpoint::EXECUTOR_FILES_WRITTEN)
        .await;
}

/// Sliding windows: 20-second windows every 10 seconds, each record in two of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_count_each_record_in_every_window_it_belongs_to() {
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    for partition in 0..2 {
        produce(&cluster, partition, 1..=65);
    }
    let spec = cluster.spec(
        "sliding",
        "clicks",
        "SELECT window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 20s, slide: 10s}\n    max_offsets_per_trigger: 40",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    // Batches of 20 s of records per partition: windows ending by 20, 40 and 60 s close.
    assert_eq!(
        windows(&cluster, &spec).await,
        BTreeMap::from([(-10, 18), (0, 38), (10, 40), (20, 40), (30, 40), (40, 40)])
    );
}

/// Checkpoint cost follows the change, not the state: once many groups are open, a batch
/// that touches a few of them writes a small file of its changes and carries the files
/// holding the others over unread; the window is still written whole when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_writes_the_state_it_changed_and_carries_the_rest_over() {
    const HOUR: i64 = 3_600_000;
    const CUSTOMERS: i64 = 2_000;
    let hour = T - T % HOUR;
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    let spec = cluster.spec(
        "grouped",
        "clicks",
        "SELECT window_start, window_end, customer_id, count(*) AS n FROM source \
         GROUP BY window_start, window_end, customer_id",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}\n    window: {size: 1h}",
    );
    let send = |customers: std::ops::Range<i64>, at: i64| {
        cluster
            .produce_customer_orders("clicks", 2, customers, hour + at)
            .unwrap();
    };
    let run = || cluster.run_to_last_batch_with_records(&spec);

    // Every customer opens a group in the hour's window.
    send(0..CUSTOMERS, 1_000);
    let first = run().await;
    assert!(first.state_rows >= CUSTOMERS as u64, "{first:?}");
    assert_eq!(first.state_bytes_written, first.state_bytes);

    // Later batches touch four of them.
    for round in 1..=3 {
        send(0..4, 60_000 * round);
        let batch = run().await;
        assert!(batch.state_bytes >= first.state_bytes, "{batch:?}");
        assert!(
            batch.state_bytes_written * 4 < batch.state_bytes,
            "round {round}: wrote {} of {} state bytes",
            batch.state_bytes_written,
            batch.state_bytes
        );
        assert_eq!(batch.state_bytes_read, 0, "no window closed: nothing read");
    }

    // The watermark passes the hour (a record on each partition): every group is written
    // once, with every record.
    send(0..2, 2 * HOUR);
    run().await;
    let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
    for batch in cluster.table_rows(&spec).await.unwrap() {
        let customers = arrow::compute::cast(
            batch.column_by_name("customer_id").unwrap(),
            &DataType::Int64,
        )
        .unwrap();
        let customers = customers.as_primitive::<Int64Type>();
        let n = batch
            .column_by_name("n")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            assert!(
                counts.insert(customers.value(i), n.value(i)).is_none(),
                "customer {} written twice",
                customers.value(i)
            );
        }
    }
    assert_eq!(counts.len(), CUSTOMERS as usize);
    assert!(
        counts.iter().all(|(c, n)| *n == if *c < 4 { 4 } else { 1 }),
        "{counts:?}"
    );
}
