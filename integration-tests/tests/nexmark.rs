//! Nexmark's stateless queries over the suite's event stream (persons, auctions and bids
//! in one topic): Sluice commits exactly the rows single-process DataFusion computes over
//! the same records, and the example job is the suite's q1.

use sluice_core::spec::JobSpec;
use sluice_datagen::nexmark::{event_json, Q0, Q1, Q2, SCHEMA_YAML};
use sluice_integration_tests::differential::{query_source, source_batches};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_testkit::normalized_rows;

const PARTITIONS: i32 = 4;
const EVENTS: u64 = 5_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_q0_q1_q2_commit_what_datafusion_computes_over_the_stream() {
    let cluster = TestCluster::start("nexmark", PARTITIONS, 2).await.unwrap();
    let producer = sluice_datagen::synthetic::producer(&cluster.bootstrap_servers()).unwrap();
    let events = sluice_datagen::synthetic::EventRange {
        first: 0,
        count: EVENTS,
        rate: None,
    };
    sluice_datagen::synthetic::produce_events(
        &producer,
        "nexmark",
        PARTITIONS,
        events,
        |_| {},
        |seq, now_ms| (None, event_json(seq, now_ms)),
    )
    .unwrap();
    let source = "    max_offsets_per_trigger: 1500";
    for (name, sql) in [("q0", Q0), ("q1", Q1), ("q2", Q2)] {
        let spec = cluster
            .spec(
                &format!("nexmark-{name}"),
                "nexmark",
                sql,
                "{available_now: true}",
                source,
            )
            .patched(sluice_datagen::synthetic::ORDER_SCHEMA_YAML, SCHEMA_YAML);
        let job = cluster.submit(&spec).await.unwrap();
        let status = cluster.wait_until_finished(&job).await;
        assert!(status.last_committed_batch >= 2, "{name}: several batches");

        let records = source_batches(&cluster, &JobSpec::parse(&spec).unwrap()).unwrap();
        let expected = normalized_rows(&query_source(sql, records).await.unwrap());
        let committed = normalized_rows(&cluster.table_rows(&spec).await.unwrap());
        assert!(!expected.is_empty(), "{name}: rows to compare");
        assert_eq!(committed.len(), expected.len(), "{name}");
        assert_eq!(committed, expected, "{name}");
    }
}

#[test]
fn the_example_job_is_nexmark_q1_over_the_generators_schema() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/nexmark-q1.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let spec = JobSpec::parse(&text).unwrap();
    assert_eq!(spec.sql.trim(), Q1);
    assert!(text.contains(&format!("schema: {SCHEMA_YAML}")));
}
