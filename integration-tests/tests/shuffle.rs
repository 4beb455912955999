//! The shuffle under failure and memory pressure: an executor killed while a batch's map
//! outputs wait for the reduce stage (its map tasks run again, the batch commits once), and
//! map outputs spilled to disk, then released once their batch is committed.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_datagen::synthetic::Order;
use sluice_integration_tests::check::assert_unique_batches;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 20_000;
const PARTITIONS: i32 = 4;
/// Four batches of 5,000 offsets, each one map task per partition.
const BATCH: &str = "    max_offsets_per_trigger: 5000";
const COUNT_SQL: &str = "SELECT product_id, count(*) AS n FROM source GROUP BY product_id";

/// Orders per product over all events: what the per-batch counts must add up to.
fn expected_counts() -> BTreeMap<i64, i64> {
    let mut counts = BTreeMap::new();
    for seq in 0..EVENTS {
        *counts.entry(Order::new(seq, 0).product_id).or_insert(0) += 1;
    }
    counts
}

/// The per-batch counts of the table, added up per product.
fn table_counts(batches: &[RecordBatch]) -> BTreeMap<i64, i64> {
    let mut counts = BTreeMap::new();
    for batch in batches {
        let products = batch.column_by_name("product_id").unwrap();
        let n = batch.column_by_name("n").unwrap();
        for (product, n) in products
            .as_primitive::<Int64Type>()
            .iter()
            .zip(n.as_primitive::<Int64Type>().iter())
        {
            *counts.entry(product.unwrap()).or_insert(0) += n.unwrap();
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_during_the_shuffle_reruns_its_map_tasks_and_commits_once() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 3).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    // The driver pauses once the map stage of batch 1 is done: its outputs wait on the
    // executors for the reduce stage.
    cluster.kill_driver();
    cluster.driver_env = vec![(
        FAILPOINTS_ENV.to_string(),
        format!("{}@1=sleep:4000", failpoint::MAP_STAGE_DONE),
    )];
    cluster.start_driver().unwrap();
    cluster.wait_for_driver().await.unwrap();
    let spec = TestCluster::per_batch(&cluster.spec(
        "shuffle-kill",
        "orders",
        COUNT_SQL,
        "{available_now: true}",
        BATCH,
    ));
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_for_log(
            "failpoint map_stage_done hit at batch 1",
            Duration::from_secs(120),
        )
        .await
        .unwrap();
    let holder = (0..3)
        .find(|i| {
            cluster
                .executor_metric(*i, "sluice_executor_shuffle_memory_bytes")
                .is_ok_and(|bytes| bytes > 0.0)
        })
        .expect("some executor holds map outputs");
    cluster.kill_executor(holder);

    cluster.wait_until_finished(&job).await;
    assert!(
        cluster
            .logs_tail(usize::MAX)
            .contains("map output lost; running its map task again"),
        "the lost map outputs were computed again\n{}",
        cluster.logs_tail(40)
    );
    assert_unique_batches(&cluster.committed_batches(&spec).await.unwrap());
    let table = cluster.table_rows(&spec).await.unwrap();
    assert_eq!(table_counts(&table), expected_counts());
    let stray = cluster.uncommitted_files(&spec).await.unwrap();
    assert!(stray.is_empty(), "uncommitted files left behind: {stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_outputs_over_the_memory_bound_spill_to_disk_and_are_released() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
    let spill = cluster.dir.path().join("spill");
    let spill_dir = spill.to_string_lossy().into_owned();
    for _ in 0..2 {
        cluster
            .start_executor(&[
                ("SLUICE_SHUFFLE_MEMORY_BYTES", "0"),
                ("SLUICE_SPILL_DIR", &spill_dir),
            ])
            .unwrap();
    }
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = TestCluster::per_batch(&cluster.spec(
        "shuffle-spill",
        "orders",
        COUNT_SQL,
        "{available_now: true}",
        BATCH,
    ));
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let table = cluster.table_rows(&spec).await.unwrap();
    assert_eq!(table_counts(&table), expected_counts());
    for executor in 0..2 {
        let held = cluster.executor_metric(executor, "sluice_executor_shuffle_memory_bytes");
        assert_eq!(held.unwrap(), 0.0, "nothing is kept in memory");
    }
    let spilled: f64 = (0..2)
        .map(|i| {
            cluster
                .executor_metric(i, "sluice_executor_shuffle_spilled_bytes_total")
                .unwrap()
        })
        .sum();
    assert!(spilled > 0.0, "map outputs went to disk");
    // Released after each commit: no spill file outlives its batch.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<_> = std::fs::read_dir(&spill).unwrap().flatten().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "spill files left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
