//! Outages and data loss: the job pauses while Kafka or etcd is gone, shows why, resumes by
//! itself without loss or duplication; offsets deleted by retention fail the job or are
//! skipped and counted, as `fail_on_data_loss` says.

use std::time::Duration;

use sluice_integration_tests::check::FILTER_SQL;
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_proto::v1::WatchJobRequest;

const EVENTS: u64 = 20_000;
const PARTITIONS: i32 = 4;
const SMALL_BATCHES: &str = "    max_offsets_per_trigger: 2000";

/// A cluster running the filter job `name` over EVENTS orders in small batches, once its
/// first batch is committed: (cluster, job id, spec).
async fn running_filter_job(name: &str) -> (TestCluster, String, String) {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        name,
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        SMALL_BATCHES,
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_for(&job, Duration::from_secs(60), |s| {
            s.last_committed_batch >= 0
        })
        .await
        .unwrap();
    (cluster, job, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_pauses_the_job_which_resumes_by_itself() {
    let (cluster, job, spec) = running_filter_job("kafka-outage").await;
    let mut watch = cluster
        .client()
        .await
        .unwrap()
        .watch_job(WatchJobRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    cluster.kafka.broker_down(1).unwrap();
    let paused = cluster
        .wait_for(&job, Duration::from_secs(90), |s| {
            s.message.contains("kafka")
        })
        .await
        .unwrap();
    assert_eq!(
        paused.state, "RUNNING",
        "an outage pauses, it does not fail: {paused:?}"
    );
    // Watchers see the pause and its cause too. Other retry notices may come first on a
    // loaded machine (an executor call timing out, say); the Kafka one must follow.
    let mut other_notices = Vec::new();
    let notice = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(p) = watch.message().await.unwrap() {
            if p.batch_id < 0 && p.job_state.is_empty() {
                if p.message.contains("kafka") {
                    return Some(p);
                }
                other_notices.push(p.message);
            }
        }
        None
    })
    .await;
    assert!(
        matches!(notice, Ok(Some(_))),
        "no Kafka pause notice on the watch stream; other notices: {other_notices:?}\n{}",
        cluster.logs_tail(40)
    );
    cluster.kafka.broker_up(1).unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_pauses_the_job_which_resumes_by_itself() {
    let (mut cluster, job, spec) = running_filter_job("etcd-outage").await;
    cluster.etcd.stop();
    // The driver sees the outage: once its lease lapses it steps down (no driver commits
    // without etcd) and stands by, campaigning again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let stepped_down = loop {
        let metrics = cluster.http_get(0, "/metrics").map(|(_, body)| body);
        if metrics
            .as_deref()
            .is_ok_and(|m| m.contains("sluice_leader 0"))
        {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        stepped_down,
        "the driver did not step down while etcd was gone\n{}",
        cluster.logs_tail(40)
    );
    cluster.etcd.restart().unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_lost_to_retention_fail_the_job_or_are_skipped_and_counted() {
    // Without read-ahead: a consumer left on the partition by the first job would fetch the
    // padding records while they are still in Kafka, before retention deletes them, and the
    // resumed job would (correctly) lose nothing.
    let mut cluster = TestCluster::start("short", 1, 0).await.unwrap();
    for _ in 0..2 {
        cluster
            .start_executor(&[("SLUICE_KAFKA_READ_AHEAD", "false")])
            .unwrap();
    }
    cluster.produce_orders("short", 1, 0, 100).unwrap();
    let sql = "SELECT order_id, _offset AS o FROM source";
    let strict = cluster.spec("strict-loss", "short", sql, "{available_now: true}", "");
    let job = cluster.submit(&strict).await.unwrap();
    cluster.wait_until_finished(&job).await;

    // About 8 MiB more: the mock broker keeps 5 MiB, so offsets 100.. fall out.
    cluster.produce_padded("short", 0, 80, 100_000).unwrap();
    let low = cluster.low_watermark("short", 0).unwrap();
    assert!(
        low > 100,
        "retention must have deleted offsets; low watermark {low}"
    );

    // The same job resumes from its checkpoint (offset 100), which Kafka no longer has.
    let job = cluster.submit(&strict).await.unwrap();
    let status = cluster.wait_until_ended(&job).await.unwrap();
    assert_eq!(status.state, "FAILED", "{status:?}");
    assert!(status.message.contains("data loss"), "{}", status.message);
    assert!(
        status.message.contains(&format!("100..{low} of short/0")),
        "{}",
        status.message
    );

    let lenient = cluster.spec(
        "lenient-loss",
        "short",
        sql,
        "{available_now: true}",
        "    starting_offsets: {short: {0: 50}}\n    fail_on_data_loss: false",
    );
    let job = cluster.submit(&lenient).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let lost = cluster
        .driver_metric(r#"sluice_offsets_lost_total{job="lenient-loss"}"#)
        .await
        .unwrap();
    assert_eq!(lost as i64, low - 50);
    let committed = cluster.row_count(&lenient).await.unwrap();
    assert_eq!(
        committed as i64,
        180 - low,
        "every record still in Kafka, once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_outage_pauses_the_job_which_resumes_by_itself() {
    let (cluster, job, spec) = running_filter_job("catalog-outage").await;
    // The table's metadata becomes unreadable, as when the catalog's storage is gone.
    let metadata = cluster
        .dir
        .path()
        .join("warehouse/test/catalog_outage/metadata");
    let away = metadata.with_extension("away");
    std::fs::rename(&metadata, &away).unwrap();
    let paused = cluster
        .wait_for(&job, Duration::from_secs(60), |s| {
            s.message.contains("iceberg")
        })
        .await;
    // Commit attempts during the outage may have written new (unreferenced) manifest files
    // into a fresh metadata directory: keep them with the rest.
    if metadata.exists() {
        for entry in std::fs::read_dir(&metadata).unwrap().flatten() {
            std::fs::rename(entry.path(), away.join(entry.file_name())).unwrap();
        }
        std::fs::remove_dir(&metadata).unwrap();
    }
    std::fs::rename(&away, &metadata).unwrap();
    let paused = paused.unwrap();
    assert_eq!(
        paused.state, "RUNNING",
        "an outage pauses, it does not fail: {paused:?}"
    );
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert!(cluster.uncommitted_files(&spec).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_beyond_a_recreated_topic_fails_the_job_naming_the_partition() {
    let cluster = TestCluster::start("recreated", 1, 1).await.unwrap();
    cluster.produce_orders("recreated", 1, 0, 100).unwrap();
    let sql = "SELECT order_id FROM source";
    let spec = cluster.spec("recreated", "recreated", sql, "{available_now: true}", "");
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;

    // The topic "deleted and re-created": same name, a new log of 10 records, while the
    // job's checkpoint says offset 100 comes next.
    let kafka = rdkafka::mocking::MockCluster::new(1).unwrap();
    kafka.create_topic("recreated", 1, 1).unwrap();
    let producer = sluice_datagen::synthetic::producer(&kafka.bootstrap_servers()).unwrap();
    sluice_datagen::synthetic::produce_orders(&producer, "recreated", 1, 0, 10, None, |_| {})
        .unwrap();
    let moved = spec.patched(&cluster.bootstrap_servers(), &kafka.bootstrap_servers());
    let job = cluster.submit(&moved).await.unwrap();
    let status = cluster.wait_until_ended(&job).await.unwrap();
    assert_eq!(status.state, "FAILED", "{status:?}");
    assert!(
        status.message.contains("recreated/0")
            && status.message.contains("offset 100")
            && status.message.contains("ends at 10"),
        "{}",
        status.message
    );
    assert_eq!(
        cluster.row_count(&spec).await.unwrap(),
        100,
        "nothing committed is lost and nothing re-read"
    );
}
