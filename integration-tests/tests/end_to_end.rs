//! End-to-end: real etcd, mock Kafka, the driver binary and two executor binaries.

use std::time::Duration;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Int32Type, Int64Type};
use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_core::BatchId;
use sluice_integration_tests::check::{assert_exactly_once, expected_rows, rows, FILTER_SQL};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 200_000;
const PARTITIONS: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_job_commits_every_record_exactly_once() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    // Each batch's four ranges are packed into tasks of 30,000 to 50,000 offsets.
    let spec = cluster
        .spec(
            "filter-once",
            "orders",
            FILTER_SQL,
            "{available_now: true}",
            "    max_offsets_per_trigger: 80000",
        )
        .patched(
            "max_records_per_task: 20000, min_records_per_task: 1",
            "max_records_per_task: 50000, min_records_per_task: 30000",
        );
    let job = cluster.submit(&spec).await.unwrap();
    let status = cluster.wait_until_finished(&job).await;
    // 200,000 offsets at most 80,000 per batch: three batches.
    assert_eq!(status.last_committed_batch, 2);
    let tasks: Vec<u32> = status.recent_batches.iter().map(|b| b.tasks).collect();
    // 80,000 offsets hold two tasks of at least 30,000 (two ranges each); the last
    // batch's 40,000 only one (four ranges).
    assert_eq!(
        tasks,
        vec![2, 2, 1],
        "ranges packed into tasks of at least 30,000"
    );
    let batches = cluster.committed_batches(&spec).await.unwrap();
    assert_eq!(batches, vec!["0", "1", "2"]);
    let table = cluster.table_rows(&spec).await.unwrap();
    assert_exactly_once(rows(&table), expected_rows(EVENTS, PARTITIONS), || {
        cluster.logs_tail(40)
    });

    // The table at a glance, through the driver.
    let described = cluster
        .client()
        .await
        .unwrap()
        .describe_table(sluice_proto::v1::DescribeTableRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.snapshots, 3);
    assert_eq!(
        described.total_records as usize,
        table.iter().map(RecordBatch::num_rows).sum::<usize>()
    );
    assert!(described.data_files >= 3 && described.total_bytes > 0);
    assert!(described.partition_fields.is_empty());
    let batches: Vec<i64> = described
        .recent_snapshots
        .iter()
        .map(|s| s.batch_id)
        .collect();
    assert_eq!(batches, vec![2, 1, 0], "newest first");
    // And as `sluice table` prints it.
    let output = std::process::Command::new(sluice_integration_tests::binary("sluice"))
        .args(["--driver", &cluster.driver_url(), "table", &job])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("partitioning: unpartitioned") && printed.contains("batch     2"),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_killed_mid_stream_loses_and_duplicates_nothing() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        "filter-killed",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        "    max_offsets_per_trigger: 15000",
    );
    let job = cluster.submit(&spec).await.unwrap();
    // Kill the driver twice, each time while batches are running.
    for committed in [1, 5] {
        cluster
            .wait_for(&job, Duration::from_secs(120), |s| {
                s.last_committed_batch >= committed
            })
            .await
            .unwrap();
        cluster.kill_driver();
        cluster.start_driver().unwrap();
        cluster.wait_for_driver().await.unwrap();
    }
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_record_fails_the_batch_and_commits_nothing_of_it() {
    let cluster = TestCluster::start("dirty", 2, 2).await.unwrap();
    cluster.produce_orders("dirty", 2, 0, 100).unwrap();
    // Partition 1 now holds offsets 0..50; the bad record lands at offset 50.
    cluster
        .produce_raw("dirty", 1, &["{\"order_id\": \"o-x\", \"amount\": "])
        .unwrap();
    let sql = "SELECT order_id, _partition AS p, _offset AS o FROM source";
    let failing = cluster.spec(
        "strict",
        "dirty",
        sql,
        "{available_now: true}",
        "    on_malformed: fail",
    );
    let job = cluster.submit(&failing).await.unwrap();
    let status = cluster.wait_until_ended(&job).await.unwrap();
    assert_eq!(status.state, "FAILED", "{status:?}");
    assert!(status.message.contains("dirty/1@50"), "{}", status.message);
    assert_eq!(status.last_committed_batch, -1);
    assert!(cluster.table_rows(&failing).await.unwrap().is_empty());

    let skipping = cluster.spec(
        "lenient",
        "dirty",
        sql,
        "{available_now: true}",
        "    on_malformed: skip",
    );
    let job = cluster.submit(&skipping).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let skipped = cluster
        .driver_metric(r#"sluice_malformed_records_total{job="lenient"}"#)
        .await
        .unwrap();
    assert_eq!(skipped, 1.0);
    let committed = cluster.row_count(&skipping).await.unwrap();
    assert_eq!(committed, 100);

    let dead_lettering = cluster.spec(
        "dlq",
        "dirty",
        sql,
        "{available_now: true}",
        "    on_malformed: dead_letter",
    );
    let job = cluster.submit(&dead_lettering).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let committed = cluster.row_count(&dead_lettering).await.unwrap();
    assert_eq!(committed, 100);
    let letters = cluster.dead_letter_rows(&dead_lettering).await.unwrap();
    assert_eq!(letters.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    let letter = &letters.iter().find(|b| b.num_rows() == 1).unwrap();
    let col = |name: &str| letter.column_by_name(name).unwrap().clone();
    assert_eq!(col("partition").as_primitive::<Int32Type>().value(0), 1);
    assert_eq!(col("offset").as_primitive::<Int64Type>().value(0), 50);
    assert_eq!(col("topic").as_string::<i32>().value(0), "dirty");
    assert_eq!(
        col("value").as_binary::<i64>().value(0),
        b"{\"order_id\": \"o-x\", \"amount\": "
    );
    assert!(!col("error").as_string::<i32>().value(0).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_jobs_are_refused_at_submit_with_the_cause() {
    let cluster = TestCluster::start("orders", 1, 1).await.unwrap();
    let refused = |spec: String| {
        let cluster = &cluster;
        async move {
            cluster
                .submit(&spec)
                .await
                .expect_err("the job must be refused")
        }
    };
    let trigger = "{available_now: true}";

    let status = refused(cluster.spec("a", "orders", "SELECT nope FROM source", trigger, "")).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("nope"), "{}", status.message());

    // Rows of every task mixed with a constant row: no stage can hold both.
    let mixed = "SELECT order_id FROM source UNION ALL SELECT 'none'";
    let status = refused(cluster.spec("b", "orders", mixed, trigger, "")).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("cannot be run across tasks"),
        "{}",
        status.message()
    );

    let missing_table = format!(
        "{}tables: [{{name: products, parquet: /nonexistent/products}}]\n",
        cluster.spec("b2", "orders", "SELECT order_id FROM source", trigger, "")
    );
    let status = refused(missing_table).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("tables[0].parquet"),
        "{}",
        status.message()
    );

    let status =
        refused(cluster.spec("c", "missing", "SELECT order_id FROM source", trigger, "")).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("missing"), "{}", status.message());

    let bad_field = cluster.spec(
        "d",
        "orders",
        "SELECT order_id FROM source",
        "{every: 1s}",
        "",
    );
    let status = refused(bad_field).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("every"), "{}", status.message());

    let port = sluice_testkit::free_port();
    let unreachable = cluster
        .spec("e", "orders", "SELECT order_id FROM source", trigger, "")
        .patched(&cluster.bootstrap_servers(), &format!("127.0.0.1:{port}"));
    let status = refused(unreachable).await;
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains(&port.to_string()),
        "{}",
        status.message()
    );

    // Client properties: unknown ones, secrets written into the spec, secrets that cannot
    // be resolved and properties Sluice sets itself are refused, each named.
    for (name, properties, names) in [
        ("f", "{no.such.property: x}", vec!["no.such.property"]),
        ("g", "{sasl.password: hunter2}", vec!["sasl.password", "${env:NAME}"]),
        (
            "h",
            "{security.protocol: SASL_PLAINTEXT, sasl.mechanism: PLAIN, sasl.username: u, sasl.password: \"${env:SLUICE_UNSET_SECRET}\"}",
            vec!["sasl.password", "SLUICE_UNSET_SECRET"],
        ),
        ("i", "{group.id: mine}", vec!["group.id", "set by Sluice"]),
    ] {
        let spec = cluster.spec(
            name,
            "orders",
            "SELECT order_id FROM source",
            trigger,
            &format!("    properties: {properties}"),
        );
        let status = refused(spec).await;
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{properties}");
        for expected in names {
            assert!(
                status.message().contains(expected),
                "{properties}: {}",
                status.message()
            );
        }
        assert!(!status.message().contains("hunter2"), "{}", status.message());
    }

    // Nothing was started by any refused submit.
    let mut client = cluster.client().await.unwrap();
    let jobs = client
        .list_jobs(sluice_proto::v1::ListJobsRequest {})
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(jobs.is_empty(), "{jobs:?}");
}

/// A stream behind its trigger runs the next batch while the last one commits, on the
/// offsets it looks up then (as its trigger would): the records produced while batch 0
/// ran make up batch 1, logged and run before batch 0 is checkpointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_behind_runs_what_arrived_during_a_batch_while_that_batch_commits() {
    const FIRST: u64 = 4_000;
    const MORE: u64 = 4_000;
    let stall = format!(
        "{}@0=sleep:3000,{}@0=sleep:3000",
        failpoint::FILES_WRITTEN,
        failpoint::SNAPSHOT_COMMITTED
    );
    let cluster = TestCluster::start_with_first_driver_env(
        "orders",
        PARTITIONS,
        2,
        1,
        &[(FAILPOINTS_ENV, stall.as_str())],
    )
    .await
    .unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, FIRST)
        .unwrap();
    let spec = cluster.spec(
        "behind",
        "orders",
        FILTER_SQL,
        "{processing_time: 10ms}",
        "",
    );
    let job = cluster.submit(&spec).await.unwrap();
    let hit = |point: &str| format!("failpoint {point} hit at batch 0");
    cluster
        .wait_for_log(&hit(failpoint::FILES_WRITTEN), Duration::from_secs(60))
        .await
        .unwrap();
    // Batch 0's files are written (and its trigger long due): what arrives now is not in it.
    cluster
        .produce_orders("orders", PARTITIONS, FIRST, MORE)
        .unwrap();
    cluster
        .wait_for_log(&hit(failpoint::SNAPSHOT_COMMITTED), Duration::from_secs(60))
        .await
        .unwrap();
    // Batch 0 stalls between its snapshot and its checkpoint for 3 s.
    let next_logged = || async {
        let logged = cluster.logged_and_checkpointed(&job).await;
        logged.is_ok_and(|(logged, _)| logged >= 1)
    };
    cluster
        .wait_until(Duration::from_secs(30), "batch 1 logged", next_logged)
        .await
        .unwrap();
    let (_, checkpointed) = cluster.logged_and_checkpointed(&job).await.unwrap();
    assert_eq!(
        checkpointed,
        -1,
        "batch 1 was logged only after batch 0's checkpoint\n{}",
        cluster.logs_tail(30)
    );
    let log = cluster.job_log(&job).await.unwrap();
    let mut planned = Vec::new();
    for batch in [0, 1] {
        let plan = log.plan(BatchId::new(batch)).await.unwrap();
        planned.push(plan.expect("logged").total_offsets());
    }
    assert_eq!(
        planned,
        vec![FIRST, MORE],
        "batch 1 holds what arrived while batch 0 ran"
    );
    cluster
        .wait_for(&job, Duration::from_secs(60), |s| {
            s.last_committed_batch >= 1
        })
        .await
        .unwrap();
    cluster.stop_and_wait(&job).await.unwrap();
    cluster
        .assert_exactly_once(&spec, FIRST + MORE, PARTITIONS)
        .await;
}
