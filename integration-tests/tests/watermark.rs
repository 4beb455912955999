//! Event time: a job with a watermark tracks it across batches and restarts (it is part of
//! each batch's checkpoint), shows it in progress and metrics, and counts late records.

use sluice_integration_tests::TestCluster;

/// An order on `partition` with event time `ts` (ms since the epoch).
fn order(id: &str, ts: i64) -> String {
    format!(
        r#"{{"order_id":"{id}","customer_id":1,"product_id":1,"amount":1.0,"country":"DE","ts":{ts}}}"#
    )
}

fn produce(cluster: &TestCluster, partition: i32, prefix: &str, times: &[i64]) {
    let values: Vec<String> = times
        .iter()
        .enumerate()
        .map(|(i, ts)| order(&format!("{prefix}-{i}"), *ts))
        .collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    cluster.produce_raw("events", partition, &values).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watermark_follows_the_slowest_partition_persists_and_counts_late_records() {
    let cluster = TestCluster::start("events", 2, 2).await.unwrap();
    const T: i64 = 1_700_000_000_000;
    // Partition 0 runs ahead of partition 1.
    produce(
        &cluster,
        0,
        "a",
        &(0..50).map(|i| T + i * 1000).collect::<Vec<_>>(),
    );
    produce(
        &cluster,
        1,
        "b",
        &(0..21).map(|i| T + i * 1000).collect::<Vec<_>>(),
    );
    let spec = cluster.spec(
        "events",
        "events",
        "SELECT order_id, ts FROM source",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 5s}",
    );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    let first = status.recent_batches.last().unwrap();
    assert_eq!(
        first.watermark_ms,
        Some(T + 20_000 - 5_000),
        "the slowest partition's highest event time, less the delay"
    );
    assert_eq!(first.late_records, 0);

    // Later: one record older than the watermark, and partition 1 catching up.
    produce(&cluster, 0, "late", &[T + 10_000]);
    produce(&cluster, 1, "c", &[T + 60_000]);
    // The job resumes from its checkpoint, watermark included.
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    let second = status.recent_batches.last().unwrap();
    assert_eq!(second.batch_id, first.batch_id + 1);
    assert_eq!(second.late_records, 1, "{second:?}");
    assert_eq!(
        second.watermark_ms,
        Some(T + 49_000 - 5_000),
        "now partition 0 is the slowest"
    );
    let late = cluster
        .driver_metric(r#"sluice_late_records_total{job="events"}"#)
        .await
        .unwrap();
    assert_eq!(late, 1.0);
    let watermark = cluster
        .driver_metric(r#"sluice_watermark_seconds{job="events"}"#)
        .await
        .unwrap();
    assert_eq!(watermark, (T + 44_000) as f64 / 1000.0);
    // Without a stateful operator a late record is counted, not dropped.
    assert_eq!(cluster.row_count(&spec).await.unwrap(), 50 + 21 + 2);
}
