//! Randomized chaos: while a job runs, executors and drivers are killed and restarted and
//! Kafka answers with transient errors; afterwards every record is in the table once.
//! The seed is printed and can be replayed with `SLUICE_CHAOS_SEED`.

use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice_integration_tests::check::{
    assert_exactly_once, assert_unique_batches, expected_rows, rows, FILTER_SQL,
};
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 40_000;
const PARTITIONS: i32 = 4;
const EXECUTORS: usize = 3;
const DRIVERS: usize = 2;
const CHAOS_FOR: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_of_kills_and_kafka_errors_keeps_exactly_once() {
    let (seed, mut rng) = sluice_integration_tests::seeded("SLUICE_CHAOS_SEED", 20_261_125);
    let mut cluster = TestCluster::start_with_drivers("orders", PARTITIONS, EXECUTORS, DRIVERS)
        .await
        .unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        "chaos",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        "    max_offsets_per_trigger: 1500",
    );
    let job = cluster.submit(&spec).await.unwrap();

    let started = Instant::now();
    let mut actions = Vec::new();
    while started.elapsed() < CHAOS_FOR {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        match rng.gen_range(0..10) {
            0..=3 => {
                let i = rng.gen_range(0..EXECUTORS);
                cluster.restart_executor(i).unwrap();
                actions.push(format!("restart executor {i}"));
            }
            4..=5 => {
                if let Some(leader) = cluster.leader().await {
                    cluster.kill_driver_at(leader);
                    actions.push(format!("kill driver {leader}"));
                }
            }
            6..=7 => {
                let errors = [RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3];
                let api = if rng.gen_bool(0.5) {
                    RDKafkaApiKey::Fetch
                } else {
                    RDKafkaApiKey::ListOffsets
                };
                cluster.kafka.request_errors(api, &errors);
                actions.push(format!("inject 3 errors into {api:?}"));
            }
            _ => {}
        }
        // A killed driver comes back (as a standby) a moment later.
        for i in 0..DRIVERS {
            if !cluster.driver_running(i) && rng.gen_bool(0.5) {
                cluster.start_driver_at(i).unwrap();
                actions.push(format!("start driver {i}"));
            }
        }
    }
    for i in 0..DRIVERS {
        if !cluster.driver_running(i) {
            cluster.start_driver_at(i).unwrap();
        }
    }
    eprintln!("chaos actions (seed {seed}): {actions:?}");
    let context = || {
        format!(
            "seed {seed}, actions {actions:?}\n{}",
            cluster.logs_tail(30)
        )
    };
    let status = cluster
        .wait_until_ended(&job)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", context()));
    assert_eq!(status.state, "FINISHED", "{status:?}\n{}", context());
    assert_unique_batches(&cluster.committed_batches(&spec).await.unwrap());
    let table = cluster.table_rows(&spec).await.unwrap();
    assert_exactly_once(rows(&table), expected_rows(EVENTS, PARTITIONS), context);
}
