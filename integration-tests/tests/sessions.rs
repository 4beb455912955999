//! Session windows over a stream equal sessions over all its records: customers' bursts of
//! records, out of order within the allowed delay, spread over partitions and cut into
//! many batches at random boundaries, give exactly the sessions computed directly from the
//! records (each customer's event times, cut where two are a gap or more apart), each
//! session once, with its final count and sum. The seed (fixed by default) is printed; set
//! `SLUICE_SESSION_SEED` to try or replay another.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sluice_core::spec::JobSpec;
use sluice_integration_tests::differential::source_batches;
use sluice_integration_tests::TestCluster;

const PARTITIONS: i32 = 4;
const CUSTOMERS: i64 = 5;
const GAP_MS: i64 = 10_000;
const T: i64 = 1_700_000_000_000;

/// (customer, window_start, window_end, count, revenue in cents).
type Session = (i64, i64, i64, i64, i64);

fn column(batch: &RecordBatch, name: &str, to: DataType) -> arrow::array::ArrayRef {
    arrow::compute::cast(batch.column_by_name(name).unwrap(), &to).unwrap()
}

fn millis(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = column(
        batch,
        name,
        DataType::Timestamp(TimeUnit::Millisecond, None),
    );
    let column = column.as_primitive::<TimestampMillisecondType>();
    assert_eq!(column.null_count(), 0, "{name} has nulls");
    column.values().to_vec()
}

fn int64s(batch: &RecordBatch, name: &str) -> Vec<i64> {
    column(batch, name, DataType::Int64)
        .as_primitive::<Int64Type>()
        .values()
        .to_vec()
}

fn cents(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let column = column(batch, name, DataType::Float64);
    column
        .as_primitive::<Float64Type>()
        .values()
        .iter()
        .map(|v| (v * 100.0).round() as i64)
        .collect()
}

/// The sessions the job wrote; a session twice fails.
fn written_sessions(batches: &[RecordBatch]) -> BTreeSet<Session> {
    let mut out = BTreeSet::new();
    for batch in batches {
        let rows = int64s(batch, "customer_id")
            .into_iter()
            .zip(millis(batch, "window_start"))
            .zip(millis(batch, "window_end"))
            .zip(int64s(batch, "n"))
            .zip(cents(batch, "revenue"));
        for ((((customer, start), end), n), revenue) in rows {
            let session = (customer, start, end, n, revenue);
            assert!(out.insert(session), "session {session:?} twice");
        }
    }
    out
}

/// Sessions computed from the records themselves.
fn sessions_of_records(batches: &[RecordBatch]) -> BTreeSet<Session> {
    let mut by_customer: BTreeMap<i64, Vec<(i64, i64)>> = BTreeMap::new();
    for batch in batches {
        let rows = int64s(batch, "customer_id")
            .into_iter()
            .zip(millis(batch, "ts"))
            .zip(cents(batch, "amount"));
        for ((customer, ts), amount) in rows {
            by_customer.entry(customer).or_default().push((ts, amount));
        }
    }
    let mut sessions = BTreeSet::new();
    for (customer, mut records) in by_customer {
        records.sort_unstable();
        let mut current: Option<Session> = None;
        for (ts, amount) in records {
            current = match current {
                Some((c, start, end, n, revenue)) if ts < end => {
                    Some((c, start, ts + GAP_MS, n + 1, revenue + amount))
                }
                other => {
                    sessions.extend(other);
                    Some((customer, ts, ts + GAP_MS, 1, amount))
                }
            };
        }
        sessions.extend(current);
    }
    sessions
}

/// Produces customers' bursts of records over `span_ms` of event time to `topic`: records
/// up to 4 s apart, bursts separated by pauses of 5 to 30 s (some shorter than the gap, so
/// bursts merge), reaching Kafka up to 15 s out of event-time order on a random partition.
fn produce_bursts(cluster: &TestCluster, topic: &str, rng: &mut StdRng, span_ms: i64) {
    let mut records: Vec<(i64, String)> = vec![];
    for customer in 0..CUSTOMERS {
        let mut ts = T + rng.gen_range(0..20_000);
        while ts < T + span_ms {
            for _ in 0..rng.gen_range(1..12) {
                ts += rng.gen_range(0..4_000);
                let amount = rng.gen_range(1..50_000) as f64 / 100.0;
                let i = records.len();
                records.push((
                    ts + rng.gen_range(0..15_000),
                    format!(
                        r#"{{"order_id":"o-{i}","customer_id":{customer},"product_id":1,"amount":{amount},"country":"DE","ts":{ts}}}"#
                    ),
                ));
            }
            ts += rng.gen_range(5_000..30_000);
        }
    }
    records.sort_by_key(|(arrival, _)| *arrival);
    let mut per_partition: Vec<Vec<&str>> = vec![vec![]; PARTITIONS as usize];
    for (_, value) in &records {
        per_partition[rng.gen_range(0..PARTITIONS) as usize].push(value);
    }
    per_partition.shuffle(rng);
    for (partition, values) in per_partition.iter().enumerate() {
        cluster
            .produce_raw(topic, partition as i32, values)
            .unwrap();
    }
}

const SESSION_SQL: &str =
    "SELECT customer_id, window_start, window_end, count(*) AS n, sum(amount) AS revenue \
     FROM source GROUP BY session(ts, INTERVAL '10 seconds'), customer_id";

/// A session job's spec over `visits`, cut into batches of `per_batch` offsets.
fn session_spec(cluster: &TestCluster, name: &str, per_batch: u32) -> String {
    cluster.spec(
        name,
        "visits",
        SESSION_SQL,
        "{available_now: true}",
        &format!(
            "    watermark: {{column: ts, delay: 20s}}\n    max_offsets_per_trigger: {per_batch}"
        ),
    )
}

/// Checks that the finished job wrote exactly the sessions its final watermark closed,
/// computed from the records; returns how many.
async fn assert_sessions_written(
    cluster: &TestCluster,
    spec: &str,
    status: &sluice_proto::v1::JobStatus,
) -> usize {
    let last = status.recent_batches.last().unwrap();
    assert_eq!(last.input_rows, 0, "the job ends with a flush batch");
    let closed_by = last.watermark_ms.unwrap();
    let parsed = JobSpec::parse(spec).unwrap();
    let expected: BTreeSet<Session> =
        sessions_of_records(&source_batches(cluster, &parsed).unwrap())
            .into_iter()
            .filter(|session| session.2 <= closed_by)
            .collect();
    let merged = expected.iter().filter(|s| s.3 > 1).count();
    assert!(
        expected.len() >= 4 * CUSTOMERS as usize && merged > 0,
        "{} sessions closed, {merged} of several records",
        expected.len()
    );
    let written = written_sessions(&cluster.table_rows(spec).await.unwrap());
    assert_eq!(written, expected);
    assert!(
        last.state_rows > 0,
        "the sessions the final watermark leaves open are state"
    );
    expected.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_over_a_stream_equal_sessions_over_the_records() {
    let (seed, mut rng) = sluice_integration_tests::seeded("SLUICE_SESSION_SEED", 20_261_126);
    let cluster = TestCluster::start("visits", PARTITIONS, 2).await.unwrap();
    produce_bursts(&cluster, "visits", &mut rng, 600_000);
    let per_batch = rng.gen_range(20..60);
    let spec = session_spec(&cluster, "sessions", per_batch);
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    let batches = status.last_committed_batch + 1;
    assert!(batches >= 12, "{batches} batches of {per_batch} offsets");
    let late = cluster
        .driver_metric(r#"sluice_late_records_total{job="sessions"}"#)
        .await
        .unwrap();
    assert_eq!(late, 0.0, "records are late by less than the delay");
    let sessions = assert_sessions_written(&cluster, &spec, &status).await;
    eprintln!("{batches} batches; {sessions} sessions closed (seed {seed})");
}

/// The only executor dies after a batch's tasks wrote their files (the session stage's
/// state included); a new one runs the batch again from the same state: every session is
/// still written once with all its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_survives_an_executor_killed_after_writing_it() {
    let mut cluster = TestCluster::start("visits", PARTITIONS, 0).await.unwrap();
    let armed = format!("{}@7", sluice_core::failpoint::EXECUTOR_FILES_WRITTEN);
    cluster
        .start_executor(&[(sluice_core::failpoint::FAILPOINTS_ENV, &armed)])
        .unwrap();
    produce_bursts(&cluster, "visits", &mut StdRng::seed_from_u64(7), 300_000);
    let spec = session_spec(&cluster, "sessions-executor-killed", 40);
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_executor_exit(0, std::time::Duration::from_secs(60), "after writing state")
        .await;
    cluster.start_executor(&[]).unwrap();
    let status = cluster.wait_until_finished(&job).await;
    assert_sessions_written(&cluster, &spec, &status).await;
}

/// The driver dies after a session batch's Iceberg commit, before its checkpoint: the
/// restarted driver takes the batch's state from its snapshot, so no session is lost or
/// written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_survives_a_driver_killed_between_commit_and_checkpoint() {
    let armed = format!("{}@3", sluice_core::failpoint::SNAPSHOT_COMMITTED);
    let mut cluster = TestCluster::start_with_first_driver_env(
        "visits",
        PARTITIONS,
        2,
        1,
        &[(sluice_core::failpoint::FAILPOINTS_ENV, &armed)],
    )
    .await
    .unwrap();
    produce_bursts(&cluster, "visits", &mut StdRng::seed_from_u64(3), 300_000);
    let spec = session_spec(&cluster, "sessions-driver-killed", 40);
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_driver_exit(std::time::Duration::from_secs(60))
        .await
        .unwrap();
    cluster.start_driver().unwrap();
    cluster.wait_for_driver().await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    assert_sessions_written(&cluster, &spec, &status).await;
}

/// Checkpoint cost follows the change, not the state: once many sessions are open, a
/// batch that extends a few of them writes a small file of its new rows and leaves the
/// files holding the others as they are (it looks the rows of its keys up in them); every
/// session is still written once, with all its records, when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_batch_writes_the_rows_it_added_and_leaves_the_rest() {
    const HOUR: i64 = 3_600_000;
    const OPEN: i64 = 2_000;
    let cluster = TestCluster::start("clicks", 2, 2).await.unwrap();
    let spec = cluster.spec(
        "open-sessions",
        "clicks",
        "SELECT customer_id, window_start, window_end, count(*) AS n FROM source \
         GROUP BY session(ts, INTERVAL '1 hour'), customer_id",
        "{available_now: true}",
        "    watermark: {column: ts, delay: 0s}",
    );
    let send = |customers: std::ops::Range<i64>, at: i64| {
        cluster
            .produce_customer_orders("clicks", 2, customers, T + at)
            .unwrap();
    };
    let run = || cluster.run_to_last_batch_with_records(&spec);

    // Every customer opens a session.
    send(0..OPEN, 0);
    let first = run().await;
    assert!(first.state_rows >= OPEN as u64, "{first:?}");
    assert_eq!(first.state_bytes_written, first.state_bytes);

    // Later batches extend four of them.
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
    }

    // The watermark passes the end the first file names for its rows (a record on each
    // partition, in sessions of their own): the sessions of one record close and are
    // written; the four extended since are found open and kept.
    let written = || async {
        let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
        for batch in cluster.table_rows(&spec).await.unwrap() {
            for (customer, n) in int64s(&batch, "customer_id")
                .into_iter()
                .zip(int64s(&batch, "n"))
            {
                assert!(
                    counts.insert(customer, n).is_none(),
                    "customer {customer} written twice"
                );
            }
        }
        counts
    };
    send(OPEN..OPEN + 2, HOUR + 30_000);
    run().await;
    let counts = written().await;
    assert_eq!(counts.len(), OPEN as usize - 4);
    assert!(counts.iter().all(|(c, n)| *c >= 4 && *n == 1), "{counts:?}");

    // The watermark passes every session's end: each is written once, with every record.
    send(OPEN + 2..OPEN + 4, 3 * HOUR);
    run().await;
    let counts = written().await;
    assert_eq!(counts.len(), OPEN as usize + 2);
    assert!(
        counts.iter().all(|(c, n)| *n == if *c < 4 { 4 } else { 1 }),
        "{counts:?}"
    );
}
