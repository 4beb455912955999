//! Subscribing by pattern: a job reads every topic whose name matches its
//! `topic_pattern`, including topics created while it runs (from their beginning), each
//! record once, and never a topic that does not match; and starting by time.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::{Int32Type, Int64Type};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;

const SQL: &str = "SELECT order_id, _topic AS topic, _partition AS p, _offset AS o FROM source";

/// Rows of the table by topic, each (topic, partition, offset) at most once.
async fn rows_by_topic(cluster: &TestCluster, spec: &str) -> BTreeMap<String, usize> {
    let mut seen = std::collections::HashSet::new();
    let mut counts = BTreeMap::new();
    for batch in cluster.table_rows(spec).await.unwrap() {
        let topics = batch.column_by_name("topic").unwrap().as_string::<i32>();
        let partitions = batch
            .column_by_name("p")
            .unwrap()
            .as_primitive::<Int32Type>();
        let offsets = batch
            .column_by_name("o")
            .unwrap()
            .as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            let key = (
                topics.value(i).to_string(),
                partitions.value(i),
                offsets.value(i),
            );
            assert!(seen.insert(key.clone()), "{key:?} twice");
            *counts.entry(key.0).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_reads_matching_topics_including_ones_created_later() {
    let cluster = TestCluster::start("events.a", 2, 2).await.unwrap();
    cluster.kafka.create_topic("other", 2, 1).unwrap();
    cluster.produce_orders("events.a", 2, 0, 100).unwrap();
    cluster.produce_orders("other", 2, 1_000, 50).unwrap();
    let spec = cluster
        .spec(
            "pattern",
            "events.a",
            SQL,
            "{processing_time: 200ms}",
            "    topic_pattern: 'events\\..*'",
        )
        .patched("topics: [events.a]", "topics: []");
    assert!(spec.contains("topics: []"), "{spec}");
    let job = cluster.submit(&spec).await.unwrap();
    let first = || async { rows_by_topic(&cluster, &spec).await.get("events.a") == Some(&100) };
    cluster
        .wait_until(Duration::from_secs(60), "events.a read", first)
        .await
        .unwrap();

    // A matching topic created while the job runs is read from its beginning.
    cluster.kafka.create_topic("events.b", 3, 1).unwrap();
    cluster.produce_orders("events.b", 3, 2_000, 90).unwrap();
    cluster.produce_orders("events.a", 2, 100, 20).unwrap();
    let both = || async {
        let rows = rows_by_topic(&cluster, &spec).await;
        rows.get("events.a") == Some(&120) && rows.get("events.b") == Some(&90)
    };
    cluster
        .wait_until(Duration::from_secs(60), "events.b read", both)
        .await
        .unwrap();
    cluster.stop_and_wait(&job).await.unwrap();
    assert_eq!(
        rows_by_topic(&cluster, &spec).await,
        BTreeMap::from([("events.a".to_string(), 120), ("events.b".to_string(), 90)]),
        "every matching record once, nothing of the topic that does not match"
    );
}

/// `starting_offsets: {timestamp: …}` starts each partition at its first record that
/// new, found by Kafka's offset-for-time lookup. A time after every record starts at the
/// partitions' ends: only records produced afterwards are read. (The mock broker answers
/// every offset-for-time lookup with "no such record", so a time between records, which
/// a real broker resolves to the offset in between, is not tested here; the planner's
/// unit tests cover how found offsets become the start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_by_time_after_every_record_reads_only_newer_records() {
    let cluster = TestCluster::start("orders", 2, 1).await.unwrap();
    cluster.produce_orders("orders", 2, 0, 100).unwrap();
    let spec = cluster.spec(
        "by-time",
        "orders",
        SQL,
        "{processing_time: 200ms}",
        "    starting_offsets: {timestamp: '2100-01-01T00:00:00Z'}",
    );
    let job = cluster.submit(&spec).await.unwrap();
    let log = cluster.job_log(&job).await.unwrap();
    let started = || async { log.checkpoint().await.unwrap().is_some() };
    cluster
        .wait_until(Duration::from_secs(30), "the initial checkpoint", started)
        .await
        .unwrap();
    let initial = log.checkpoint().await.unwrap().unwrap();
    assert_eq!(
        (initial.get("orders", 0), initial.get("orders", 1)),
        (Some(50), Some(50)),
        "every partition starts at its end"
    );

    cluster.produce_orders("orders", 2, 100, 40).unwrap();
    let newer = || async { rows_by_topic(&cluster, &spec).await.get("orders") == Some(&40) };
    cluster
        .wait_until(Duration::from_secs(60), "the newer records", newer)
        .await
        .unwrap();
    for batch in cluster.table_rows(&spec).await.unwrap() {
        let offsets = batch
            .column_by_name("o")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert!(offsets.values().iter().all(|o| *o >= 50), "{offsets:?}");
    }
    cluster.stop_and_wait(&job).await.unwrap();
}
