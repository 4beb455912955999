//! Stream equals batch for windows: out-of-order records (within the allowed delay) spread
//! over partitions and cut into many batches at random boundaries yield exactly the
//! windows single-process DataFusion computes with `date_bin` over all the records, each
//! window once. The seed (fixed by default, so a run can be repeated) is printed; set
//! `SLUICE_WINDOW_SEED` to try or replay another.

use rand::Rng;
use sluice_integration_tests::differential::assert_closed_windows;
use sluice_integration_tests::TestCluster;

const PARTITIONS: i32 = 4;
const RECORDS: i64 = 3_000;
const T: i64 = 1_700_000_000_000;

/// Runs `job_sql` (windowed by `window`, a `window` map, or by a window call
/// in the SQL when empty) and compares it with `expected_sql` over all records.
async fn stream_equals_batch(
    name: &str,
    job_sql: &str,
    window: &str,
    size_ms: i64,
    expected_sql: &str,
) {
    let (seed, mut rng) = sluice_integration_tests::seeded("SLUICE_WINDOW_SEED", 20_261_125);
    let cluster = TestCluster::start("events", PARTITIONS, 2).await.unwrap();
    // One record every 200 ms of event time, up to 15 s late, on a random partition.
    let mut per_partition: Vec<Vec<String>> = vec![vec![]; PARTITIONS as usize];
    for i in 0..RECORDS {
        let ts = T + i * 200 - rng.gen_range(0..15_000);
        let amount = rng.gen_range(1..50_000) as f64 / 100.0;
        per_partition[rng.gen_range(0..PARTITIONS) as usize].push(format!(
            r#"{{"order_id":"o-{i}","customer_id":{i},"product_id":1,"amount":{amount},"country":"DE","ts":{ts}}}"#
        ));
    }
    for (partition, values) in per_partition.iter().enumerate() {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        cluster
            .produce_raw("events", partition as i32, &values)
            .unwrap();
    }
    let per_batch = rng.gen_range(150..400);
    let window = if window.is_empty() {
        String::new()
    } else {
        format!("\n    window: {window}")
    };
    let spec = cluster.spec(
        name,
        "events",
        job_sql,
        "{available_now: true}",
        &format!(
            "    watermark: {{column: ts, delay: 20s}}{window}\n    max_offsets_per_trigger: {per_batch}"
        ),
    );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    let batches = status.last_committed_batch + 1;
    assert!(batches >= 8, "{batches} batches of {per_batch} offsets");
    assert_closed_windows(&cluster, &spec, &status, size_ms, expected_sql, seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_over_a_stream_equal_date_bin_over_the_records() {
    // The window written in SQL: tumble() becomes the source's window.
    stream_equals_batch(
        "tumbling",
        "SELECT window_start, window_end, count(*) AS n, sum(amount) AS revenue FROM source \
         GROUP BY tumble(ts, INTERVAL '30 seconds')",
        "",
        30_000,
        "SELECT date_bin(INTERVAL '30 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start, \
         count(*) AS n, sum(amount) AS revenue FROM source GROUP BY 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sliding_windows_over_a_stream_equal_date_bin_over_the_records() {
    // 60-second windows every 20 seconds: a record is in the window of its 20-second bin
    // and in the two that started before it.
    let bin = "date_bin(INTERVAL '20 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')";
    let sql = format!(
        "SELECT window_start, count(*) AS n, sum(amount) AS revenue FROM ( \
           SELECT {bin} AS window_start, amount FROM source \
           UNION ALL SELECT {bin} - INTERVAL '20 seconds', amount FROM source \
           UNION ALL SELECT {bin} - INTERVAL '40 seconds', amount FROM source) w \
         GROUP BY window_start"
    );
    stream_equals_batch(
        "sliding",
        "SELECT window_start, window_end, count(*) AS n, sum(amount) AS revenue FROM source \
         GROUP BY window_start, window_end",
        "{size: 60s, slide: 20s}",
        60_000,
        &sql,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_after_another_shuffle_keep_their_rows_in_source_tasks() {
    // A window function shuffles the rows before the aggregation, so no final aggregate
    // reads the stream's shuffle: the state is the open windows' rows, kept by source
    // tasks, and the result is the same.
    stream_equals_batch(
        "tumbling-rows",
        "SELECT window_start, window_end, count(*) AS n, sum(amount) AS revenue FROM ( \
           SELECT window_start, window_end, amount, \
             row_number() OVER (PARTITION BY customer_id ORDER BY ts) AS nth FROM source) r \
         WHERE nth >= 1 GROUP BY window_start, window_end",
        "{size: 30s}",
        30_000,
        "SELECT date_bin(INTERVAL '30 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start, \
         count(*) AS n, sum(amount) AS revenue FROM source GROUP BY 1",
    )
    .await;
}
