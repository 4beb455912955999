//! Upgrades: a job checkpointed by release 0.1 (one Kafka source, its offsets at the top of
//! the checkpoint, its batch ranges at the top of the offset log) goes on under this
//! release from exactly where it stood: the logged batch runs with its logged ranges, the
//! next batches from the old checkpoint's offsets, every record once.

use std::collections::BTreeSet;

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, Int64Type};
use sluice_core::BatchId;
use sluice_driver::checkpoint::{CheckpointStore, EtcdStore, KEY_ROOT};
use sluice_driver::SourceRead;
use sluice_integration_tests::TestCluster;

/// The records release 0.1 wrote for the job: see driver/tests/fixtures/README.md.
const CHECKPOINT_0_1: &str = include_str!("../../driver/tests/fixtures/checkpoint-0.1.json");
const PLAN_0_1: &str = include_str!("../../driver/tests/fixtures/plan-0.1.json");

/// Records produced per partition of `clicks`.
const PER_PARTITION: i64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_checkpointed_by_release_0_1_goes_on_from_its_checkpoint_and_logged_batch() {
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    cluster
        .produce_orders("clicks", 2, 0, 2 * PER_PARTITION as u64)
        .unwrap();
    // The job's checkpoint after batch 2 (clicks/0 at 30, clicks/1 at 28) and its logged
    // but uncommitted batch 3 (clicks/0 30..40), as release 0.1 wrote them. The old
    // checkpoint is a windowed job's; this stateless job reads its offsets.
    let store = EtcdStore::connect(&[cluster.etcd.endpoint()])
        .await
        .unwrap();
    let job = "upgraded";
    let stateless = serde_json::from_str::<serde_json::Value>(CHECKPOINT_0_1)
        .map(|mut checkpoint| {
            let fields = checkpoint.as_object_mut().unwrap();
            for stateful in ["state_files", "max_event_time_ms", "records_at_ms"] {
                fields.remove(stateful);
            }
            checkpoint.to_string()
        })
        .unwrap();
    let plan = serde_json::from_str::<serde_json::Value>(PLAN_0_1)
        .map(|mut plan| {
            plan.as_object_mut().unwrap().remove("state_files");
            plan.to_string()
        })
        .unwrap();
    store
        .put_all(vec![
            (format!("{KEY_ROOT}{job}/checkpoint"), stateless),
            (format!("{KEY_ROOT}{job}/offsets/{:020}", 3), plan),
        ])
        .await
        .unwrap();

    let spec = cluster.spec(
        job,
        "clicks",
        "SELECT order_id, _partition AS p, _offset AS o FROM source",
        "{available_now: true}",
        "    max_offsets_per_trigger: 16",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;

    // Every record from the old checkpoint on, once; none before it.
    let mut seen = BTreeSet::new();
    for batch in cluster.table_rows(&spec).await.unwrap() {
        let p = batch
            .column_by_name("p")
            .unwrap()
            .as_primitive::<Int32Type>();
        let o = batch
            .column_by_name("o")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            assert!(
                seen.insert((p.value(i), o.value(i))),
                "{}/{} committed twice",
                p.value(i),
                o.value(i)
            );
        }
    }
    let expected: BTreeSet<(i32, i64)> = (30..PER_PARTITION)
        .map(|o| (0, o))
        .chain((28..PER_PARTITION).map(|o| (1, o)))
        .collect();
    assert_eq!(seen, expected);

    // Batch 3 ran with the ranges release 0.1 logged; batch 4 went on after them.
    let log = cluster.job_log(&job).await.unwrap();
    let logged = log.plan(BatchId::new(3)).await.unwrap().unwrap();
    let ranges = logged.kafka_ranges();
    assert_eq!(
        ranges
            .iter()
            .map(|r| (r.partition, r.start, r.end))
            .collect::<Vec<_>>(),
        vec![(0, 30, 40)]
    );
    assert!(matches!(
        logged.reads.get("source"),
        Some(SourceRead::Kafka(_))
    ));
    let next = log.plan(BatchId::new(4)).await.unwrap().unwrap();
    let starts: Vec<(i32, i64)> = next
        .kafka_ranges()
        .iter()
        .map(|r| (r.partition, r.start))
        .collect();
    assert!(
        starts.contains(&(0, 40))
            && starts
                .iter()
                .all(|&(p, s)| (p, s) == (0, 40) || (p, s) == (1, 28)),
        "batch 4 starts where batch 3 and the old checkpoint end: {starts:?}"
    );
    let checkpoint = log.checkpoint().await.unwrap().unwrap();
    assert_eq!(
        (checkpoint.get("clicks", 0), checkpoint.get("clicks", 1)),
        (Some(PER_PARTITION), Some(PER_PARTITION))
    );
}
