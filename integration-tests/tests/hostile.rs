//! One hostile record must not take the cluster down: records built to crash decoders are
//! malformed like any other, and a task that kills executors anyway (or panics) is
//! contained after two crashes, failing the job with its range named, while the other
//! executors keep serving.

use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_integration_tests::check::{expected_rows, rows, Row, FILTER_SQL};
use sluice_integration_tests::TestCluster;
use sluice_testkit::hostile_values;

const PARTITIONS: i32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_malformed_and_executors_stay_up() {
    let mut cluster = TestCluster::start("hostile", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("hostile", PARTITIONS, 0, 100)
        .unwrap();
    // Partition 0 holds offsets 0..50; the hostile records follow, then more orders.
    let hostile = hostile_values();
    let values: Vec<Option<Vec<u8>>> = hostile.iter().map(|(_, v)| v.clone()).collect();
    cluster.produce_values("hostile", 0, &values).unwrap();
    cluster
        .produce_orders("hostile", PARTITIONS, 100, 100)
        .unwrap();
    let job_spec = |name: &str, on_malformed: &str| {
        cluster.spec(
            name,
            "hostile",
            FILTER_SQL,
            "{available_now: true}",
            &format!("    on_malformed: {on_malformed}"),
        )
    };

    let failing = job_spec("hostile-fail", "fail");
    let skipping = job_spec("hostile-skip", "skip");
    let dead_lettering = job_spec("hostile-dlq", "dead_letter");
    let mut jobs = Vec::new();
    for spec in [&failing, &skipping, &dead_lettering] {
        jobs.push(cluster.submit(spec).await.unwrap());
    }

    let failed = cluster.wait_until_ended(&jobs[0]).await.unwrap();
    assert_eq!(failed.state, "FAILED", "{failed:?}");
    assert!(
        failed.message.contains("hostile/0@50") && failed.message.contains("max_nesting_depth"),
        "the first hostile record is named: {}",
        failed.message
    );
    assert!(cluster.table_rows(&failing).await.unwrap().is_empty());

    for (job, spec) in [(&jobs[1], &skipping), (&jobs[2], &dead_lettering)] {
        cluster.wait_until_finished(job).await;
        // The hostile records shifted partition 0's later offsets: compare orders alone.
        let orders = |rows: Vec<Row>| {
            let mut orders: Vec<(String, i64, i64)> = rows
                .into_iter()
                .map(|(_, _, id, p, a)| (id, p, a))
                .collect();
            orders.sort();
            orders
        };
        let table = cluster.table_rows(spec).await.unwrap();
        assert_eq!(
            orders(rows(&table)),
            orders(expected_rows(200, PARTITIONS)),
            "every valid order exactly once"
        );
    }
    let skipped = cluster
        .driver_metric(r#"sluice_malformed_records_total{job="hostile-skip"}"#)
        .await
        .unwrap();
    assert!(
        skipped >= 4.0 && skipped <= hostile.len() as f64,
        "the four deep records and any other undecodable one are skipped and counted: {skipped}"
    );

    let letters = cluster.dead_letter_rows(&dead_lettering).await.unwrap();
    let letters: Vec<(i64, usize, String)> = letters
        .iter()
        .flat_map(|batch: &RecordBatch| {
            let offsets = batch
                .column_by_name("offset")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .clone();
            let values = batch
                .column_by_name("value")
                .unwrap()
                .as_binary::<i64>()
                .clone();
            let errors = batch
                .column_by_name("error")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..batch.num_rows())
                .map(|i| {
                    let length = if values.is_null(i) {
                        0
                    } else {
                        values.value(i).len()
                    };
                    (offsets.value(i), length, errors.value(i).to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(letters.len() as f64, skipped, "{letters:?}");
    let deep: Vec<(i64, usize)> = letters
        .iter()
        .filter(|(_, _, error)| error.contains("max_nesting_depth"))
        .map(|(offset, length, _)| (*offset, *length))
        .collect();
    assert_eq!(
        deep,
        (0..4)
            .map(|i| (50 + i as i64, hostile[i].1.as_ref().unwrap().len()))
            .collect::<Vec<_>>(),
        "the deep records are dead-lettered whole"
    );

    for executor in 0..2 {
        assert!(
            !cluster.executor_exited(executor),
            "executor {executor} died\n{}",
            cluster.logs_tail(40)
        );
    }
}

/// A cluster whose executors are all armed with `action` at the point where a task of
/// batch 1 has read its records; a filter job over one partition in batches of 50.
async fn armed_cluster(executors: usize, action: &str) -> (TestCluster, String) {
    let mut cluster = TestCluster::start("poison", 1, 0).await.unwrap();
    let armed = format!("{}@1{action}", failpoint::EXECUTOR_RECORDS_READ);
    for _ in 0..executors {
        cluster.start_executor(&[(FAILPOINTS_ENV, &armed)]).unwrap();
    }
    cluster.produce_orders("poison", 1, 0, 200).unwrap();
    let spec = cluster.spec(
        "poison",
        "poison",
        FILTER_SQL,
        "{available_now: true}",
        "    max_offsets_per_trigger: 50",
    );
    let job = cluster.submit(&spec).await.unwrap();
    (cluster, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_executors_fails_the_job_after_two_deaths_naming_its_range() {
    let (mut cluster, job) = armed_cluster(3, "").await;
    let status = cluster
        .wait_until_ended(&job)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs_tail(60)));
    assert_eq!(status.state, "FAILED", "{status:?}");
    assert!(
        status.message.contains("crashed 2 times")
            && status.message.contains("poison/0 offsets 50..100"),
        "{}",
        status.message
    );
    assert_eq!(status.last_committed_batch, 0, "batch 0 stays committed");
    let dead = (0..3).filter(|&i| cluster.executor_exited(i)).count();
    assert_eq!(
        dead,
        2,
        "two executors risked, the third spared\n{}",
        cluster.logs_tail(60)
    );
    let crashes = cluster
        .driver_metric("sluice_task_crashes_total")
        .await
        .unwrap();
    assert_eq!(crashes, 2.0, "{}", cluster.logs_tail(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_task_fails_with_its_message_and_the_executors_keep_serving() {
    let (mut cluster, job) = armed_cluster(2, "=panic").await;
    let status = cluster.wait_until_ended(&job).await.unwrap();
    assert_eq!(status.state, "FAILED", "{status:?}");
    assert!(
        status.message.contains("the task panicked: failpoint")
            && status.message.contains("poison/0 offsets 50..100"),
        "{}",
        status.message
    );
    for executor in 0..2 {
        assert!(
            !cluster.executor_exited(executor),
            "executor {executor} died"
        );
        assert_eq!(
            cluster
                .executor_metric(executor, "sluice_executor_tasks_panicked_total")
                .unwrap(),
            1.0,
            "each executor ran one panicking attempt"
        );
    }
    // Both still run tasks: a job over another batch range succeeds.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let spec = cluster.spec(
        "after-panic",
        "poison",
        FILTER_SQL,
        "{available_now: true}",
        "",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
}
