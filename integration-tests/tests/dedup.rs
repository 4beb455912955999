//! Deduplication over a stream: an at-least-once producer's retries (the same record again,
//! often several batches later) reach the table once, as
//! `ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts) = 1` over all the records gives;
//! state is forgotten as the watermark passes; late records are counted, never written.
//! The seed (fixed by default) is printed; set `SLUICE_DEDUP_SEED` to try another.

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use rand::rngs::StdRng;
use rand::Rng;
use sluice_core::spec::JobSpec;
use sluice_integration_tests::differential::{assert_closed_windows, query_source, source_batches};
use sluice_integration_tests::TestCluster;

const PARTITIONS: i32 = 4;
const ORDERS: i64 = 2_000;
const T: i64 = 1_700_000_000_000;
const WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const SQL: &str = "SELECT order_id, amount FROM source";

/// Order id -> amount in cents; an order twice fails.
fn orders_of(batches: &[RecordBatch]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let ids = arrow::compute::cast(
            batch.column_by_name("order_id").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let ids = ids.as_string::<i32>();
        let amounts = batch
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            let cents = (amounts.value(i) * 100.0).round() as i64;
            let previous = out.insert(ids.value(i).to_string(), cents);
            assert!(previous.is_none(), "order {} twice", ids.value(i));
        }
    }
    out
}

fn order(i: i64, ts: i64, amount: f64) -> String {
    format!(
        r#"{{"order_id":"o-{i}","customer_id":{i},"product_id":1,"amount":{amount},"country":"DE","ts":{ts}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_records_over_a_stream_are_written_once_as_row_number_over_the_records() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    let batches = stream_equals_row_number(&cluster).await;
    // Each state task runs where its partitions ran last batch, which still holds their
    // state files in memory: little state is read from storage.
    let read: u64 = batches.iter().map(|b| b.state_bytes_read).sum();
    let state: u64 = batches.iter().map(|b| b.state_bytes).sum();
    assert!(
        read * 4 < state,
        "{read} of {state} state bytes read from storage"
    );
    // The driver's /metrics counts what every batch wrote and read (the status holds
    // the last ten): over the whole job too, state came from memory, not storage.
    let total = |series: &'static str| {
        let cluster = &cluster;
        async move {
            let name = format!(r#"sluice_state_{series}_bytes_total{{job="dedup"}}"#);
            cluster.driver_metric(&name).await.unwrap() as u64
        }
    };
    let (written_total, read_total) = (total("written").await, total("read").await);
    let written: u64 = batches.iter().map(|b| b.state_bytes_written).sum();
    assert!(written_total >= written && read_total >= read);
    assert!(
        read_total * 4 < written_total,
        "{read_total} bytes read, {written_total} written"
    );
}

/// Executors that keep no state in memory look remembered keys up in the state files,
/// one file at a time, with the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_keys_are_looked_up_in_storage_when_not_in_memory() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
    for _ in 0..2 {
        cluster
            .start_executor(&[("SLUICE_STATE_CACHE_BYTES", "0")])
            .unwrap();
    }
    let batches = stream_equals_row_number(&cluster).await;
    let read: u64 = batches.iter().map(|b| b.state_bytes_read).sum();
    assert!(read > 0, "state is read from storage");
}

/// The test's random source, seeded from `SLUICE_DEDUP_SEED` or a fixed seed (printed).
fn seeded() -> (u64, StdRng) {
    sluice_integration_tests::seeded("SLUICE_DEDUP_SEED", 20_261_126)
}

/// Produces [`ORDERS`] orders to the `orders` topic with an at-least-once producer's
/// retries; returns how many records were sent.
fn produce_retried_orders(cluster: &TestCluster, rng: &mut StdRng) -> usize {
    // One order every 200 ms of event time, up to 10 s out of order; a third of them sent
    // again (the same record) up to 100 orders (20 s) later, some twice, so a retry often
    // comes batches after its first copy.
    let mut sends: Vec<(i64, String)> = vec![];
    for i in 0..ORDERS {
        let ts = T + i * 200 - rng.gen_range(0..10_000);
        let value = order(i, ts, rng.gen_range(1..50_000) as f64 / 100.0);
        let copies = match rng.gen_range(0..6) {
            0 => 3,
            1 | 2 => 2,
            _ => 1,
        };
        for copy in 0..copies {
            let position = i + if copy == 0 { 0 } else { rng.gen_range(1..100) };
            sends.push((position, value.clone()));
        }
    }
    sends.sort_by_key(|(position, _)| *position);
    let mut per_partition: Vec<Vec<&str>> = vec![vec![]; PARTITIONS as usize];
    for (_, value) in &sends {
        per_partition[rng.gen_range(0..PARTITIONS) as usize].push(value);
    }
    for (partition, values) in per_partition.iter().enumerate() {
        cluster
            .produce_raw("orders", partition as i32, values)
            .unwrap();
    }
    sends.len()
}

/// Tumbling windows over deduplicated records: each closed window once, counting each
/// order once, as `date_bin` over `ROW_NUMBER() … = 1` of all the records gives. The
/// deduplication and the windows keep their state in two stages, one after the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_over_deduplicated_records_count_each_order_once() {
    deduplicated_windows(
        "GROUP BY tumble(ts, INTERVAL '10 seconds')",
        10_000,
        "SELECT date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start, \
         count(*) AS n, sum(amount) AS revenue FROM first GROUP BY 1",
    )
    .await;
}

/// Sliding windows over deduplicated records: an order counts once in each of the
/// windows its first record falls in (the windows are given after the deduplication).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_over_deduplicated_records_count_each_order_once_per_window() {
    let bin = "date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')";
    deduplicated_windows(
        "GROUP BY hop(ts, INTERVAL '10 seconds', INTERVAL '30 seconds')",
        30_000,
        &format!(
            "SELECT window_start, count(*) AS n, sum(amount) AS revenue FROM ( \
               SELECT {bin} AS window_start, amount FROM first \
               UNION ALL SELECT {bin} - INTERVAL '10 seconds', amount FROM first \
               UNION ALL SELECT {bin} - INTERVAL '20 seconds', amount FROM first) w \
             GROUP BY window_start"
        ),
    )
    .await;
}

/// Runs `SELECT window_start, window_end, count(*), sum(amount) FROM source {group_by}`
/// over deduplicated retried orders and compares the closed windows (of `size_ms`) with
/// `expected_sql` over `first`, the first record of each order among all the records.
async fn deduplicated_windows(group_by: &str, size_ms: i64, expected_sql: &str) {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    let (seed, mut rng) = seeded();
    produce_retried_orders(&cluster, &mut rng);
    let per_batch = rng.gen_range(60..150);
    let spec = cluster.spec(
        "dedup_windows",
        "orders",
        &format!(
            "SELECT window_start, window_end, count(*) AS n, sum(amount) AS revenue FROM source {group_by}"
        ),
        "{available_now: true}",
        &format!(
            "    watermark: {{column: ts, delay: 40s}}\n    dedup: {{key: [order_id]}}\n    max_offsets_per_trigger: {per_batch}"
        ),
    );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    assert!(
        status.last_committed_batch >= 8,
        "{per_batch} offsets per batch"
    );
    let first_rows = format!(
        "WITH first AS (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY ts) AS rn FROM source) WHERE rn = 1) \
         {expected_sql}"
    );
    assert_closed_windows(&cluster, &spec, &status, size_ms, &first_rows, seed).await;
}

/// Runs a deduplicating job over retried orders cut into batches at random boundaries
/// and checks the table against `ROW_NUMBER() … = 1` over all records; returns the
/// job's batches.
async fn stream_equals_row_number(cluster: &TestCluster) -> Vec<sluice_proto::v1::BatchProgress> {
    let (seed, mut rng) = seeded();
    let sent = produce_retried_orders(cluster, &mut rng);
    let per_batch = rng.gen_range(60..150);
    let spec = cluster.spec(
        "dedup",
        "orders",
        SQL,
        "{available_now: true}",
        &format!(
            "    watermark: {{column: ts, delay: 40s}}\n    dedup: {{key: [order_id]}}\n    max_offsets_per_trigger: {per_batch}"
        ),
    );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    let batches = status.last_committed_batch + 1;
    assert!(batches >= 8, "{batches} batches of {per_batch} offsets");
    let late = cluster
        .driver_metric(r#"sluice_late_records_total{job="dedup"}"#)
        .await
        .unwrap();
    assert_eq!(late, 0.0, "records are late by less than the delay");

    let parsed = JobSpec::parse(&spec).unwrap();
    let source = source_batches(cluster, &parsed).unwrap();
    let all_records: usize = source.iter().map(|b| b.num_rows()).sum();
    assert_eq!(all_records, sent);
    let expected = query_source(
        "SELECT order_id, amount FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY order_id ORDER BY ts) AS rn FROM source) WHERE rn = 1",
        source,
    )
    .await
    .unwrap();
    let expected = orders_of(&expected);
    assert_eq!(expected.len(), ORDERS as usize);
    let streamed = orders_of(&cluster.table_rows(&spec).await.unwrap());
    assert_eq!(streamed, expected, "seed {seed}");

    // Keys are forgotten as the watermark passes them: the state holds about the last
    // delay's worth of orders (40 s = 200 orders, with their retries), not all of them.
    let state_rows = status
        .recent_batches
        .iter()
        .map(|b| b.state_rows)
        .max()
        .unwrap();
    assert!(state_rows > 0, "keys are remembered between batches");
    assert!(
        state_rows < all_records as u64 / 3,
        "state of {state_rows} rows over {all_records} records"
    );
    status.recent_batches
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_are_counted_dead_lettered_and_a_remembered_key_never_written_twice() {
    let cluster = TestCluster::start("orders", 1, 1).await.unwrap();
    let spec = cluster.spec(
        "late",
        "orders",
        SQL,
        "{processing_time: 100ms}",
        "    watermark: {column: ts, delay: 10s, late: dead_letter}\n    dedup: {key: [order_id], within: 1m}",
    );
    cluster.submit(&spec).await.unwrap();
    // The first order moves event time to T + 60 s: the watermark becomes T + 50 s.
    let first = order(1, T + 60_000, 1.0);
    let early = order(2, T, 2.0);
    cluster.produce_raw("orders", 0, &[&first]).unwrap();
    let watermark = r#"sluice_watermark_seconds{job="late"}"#;
    cluster
        .wait_until(
            WAIT,
            "the first order and the watermark it moves",
            || async {
                cluster.row_count(&spec).await.unwrap_or(0) == 1
                    && cluster.driver_metric(watermark).await.unwrap_or(0.0) * 1000.0
                        >= (T + 50_000) as f64
            },
        )
        .await
        .unwrap();
    // A retry of the first order (remembered for a minute past the watermark, and on
    // time), a record from before the watermark (late) and a new on-time order.
    let retry = order(1, T + 60_000, 1.0);
    let new = order(3, T + 55_000, 3.0);
    cluster
        .produce_raw("orders", 0, &[&retry, &early, &new])
        .unwrap();
    cluster
        .wait_until(WAIT, "the late record counted", || async {
            cluster
                .driver_metric(r#"sluice_late_records_total{job="late"}"#)
                .await
                .unwrap_or(0.0)
                == 1.0
        })
        .await
        .unwrap();
    cluster
        .wait_until(WAIT, "the new order written", || async {
            cluster.row_count(&spec).await.unwrap_or(0) >= 2
        })
        .await
        .unwrap();
    let rows = orders_of(&cluster.table_rows(&spec).await.unwrap());
    let ids: Vec<&str> = rows.keys().map(String::as_str).collect();
    assert_eq!(ids, ["o-1", "o-3"]);
    // The late record is in the dead-letter table, its value as JSON, with the reason.
    let letters = cluster.dead_letter_rows(&spec).await.unwrap();
    let letters: Vec<(String, String)> = letters
        .iter()
        .flat_map(|batch| {
            let column = |name: &str, to: &arrow::datatypes::DataType| {
                arrow::compute::cast(batch.column_by_name(name).unwrap(), to).unwrap()
            };
            let values = column("value", &arrow::datatypes::DataType::Binary);
            let values = values.as_binary::<i32>();
            let errors = column("error", &arrow::datatypes::DataType::Utf8);
            let errors = errors.as_string::<i32>();
            (0..batch.num_rows())
                .map(|i| {
                    (
                        String::from_utf8_lossy(values.value(i)).into_owned(),
                        errors.value(i).to_string(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].0.contains(r#""order_id":"o-2""#), "{letters:?}");
    assert!(letters[0].1.starts_with("late"), "{letters:?}");
}
