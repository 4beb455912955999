//! Driver high availability: two drivers campaign in etcd; the standby takes over when the
//! leader dies and continues its jobs exactly once.

use std::time::{Duration, Instant};

use sluice_integration_tests::check::FILTER_SQL;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 40_000;
const PARTITIONS: i32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_driver_takes_over_and_the_job_commits_exactly_once() {
    let mut cluster = TestCluster::start_with_drivers("orders", PARTITIONS, 2, 2)
        .await
        .unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        "failover",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        "    max_offsets_per_trigger: 4000",
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .wait_for(&job, Duration::from_secs(120), |s| {
            s.last_committed_batch >= 1
        })
        .await
        .unwrap();
    let leader = cluster.leader().await.expect("a leader serves");
    let standby = 1 - leader;
    assert_eq!(cluster.http_get(leader, "/readyz").unwrap().0, 200);
    assert_eq!(cluster.http_get(standby, "/readyz").unwrap().0, 503);
    assert_eq!(cluster.http_get(standby, "/healthz").unwrap().0, 200);
    let (code, metrics) = cluster.http_get(leader, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("sluice_leader 1"), "{metrics}");
    assert!(metrics.contains("sluice_executors_alive 2"), "{metrics}");
    assert!(
        metrics.contains("sluice_batches_total{job=\"failover\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "sluice_batch_duration_seconds_bucket{job=\"failover\",phase=\"commit\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_partition_lag{job=\"failover\",topic=\"orders\",partition=\"0\"}"),
        "{metrics}"
    );
    let (code, page) = cluster.http_get(leader, "/").unwrap();
    assert_eq!(code, 200);
    assert!(page.contains("<h2>failover</h2>"), "{page}");
    let killed = Instant::now();
    cluster.kill_driver_at(leader);
    let successor = loop {
        match cluster.leader().await {
            Some(i) if i != leader => break i,
            _ => {}
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "no standby took over\n{}",
            cluster.logs_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "driver {successor} took over {:?} after the leader died",
        killed.elapsed()
    );
    // The old leader comes back as a standby: it must not serve.
    cluster.start_driver_at(leader).unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert_eq!(cluster.leader().await, Some(successor));
}
