//! Every query of the differential suite, run by Sluice over 2 and over 3 executors (several
//! map tasks, a shuffle between them), commits exactly the rows single-process DataFusion
//! computes over the same Kafka records and dimension tables.

use std::time::Duration;

use sluice_core::spec::JobSpec;
use sluice_datagen::synthetic::ORDER_SCHEMA_YAML;
use sluice_integration_tests::differential::{
    expected_rows, product_events, source_batches, PRODUCT_SCHEMA_YAML, QUERIES,
};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_testkit::{normalized_rows, write_regions_parquet};

const ORDERS: u64 = 2_000;
const PARTITIONS: i32 = 4;
/// Jobs running at the same time.
const WAVE: usize = 6;
/// Two map tasks of two partitions' ranges each (packed), and more shuffle partitions than
/// task slots, so reduce tasks take several partitions each.
const PARALLELISM: &str =
    "parallelism: {max_records_per_task: 1000, min_records_per_task: 600, shuffle_partitions: 8}";

async fn queries_match_single_process_datafusion(executors: usize) {
    let cluster = TestCluster::start("orders", PARTITIONS, executors)
        .await
        .unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, ORDERS)
        .unwrap();

    // The Iceberg dimension table is written by a Sluice job of its own.
    cluster.kafka.create_topic("products", 1, 1).unwrap();
    let events = product_events();
    let events: Vec<&str> = events.iter().map(String::as_str).collect();
    cluster.produce_raw("products", 0, &events).unwrap();
    let products_spec = cluster
        .spec(
            "products",
            "products",
            "SELECT product_id, name, category FROM source",
            "{available_now: true}",
            "",
        )
        .patched(ORDER_SCHEMA_YAML, PRODUCT_SCHEMA_YAML);
    let job = cluster.submit(&products_spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let products = cluster.table_rows(&products_spec).await.unwrap();

    let regions = cluster.dir.path().join("regions.parquet");
    write_regions_parquet(&regions).unwrap();
    let sink = JobSpec::parse(&products_spec).unwrap().sink.iceberg.catalog;
    let tables = format!(
        "tables:\n  - {{name: regions, parquet: \"{}\"}}\n  - name: products\n    iceberg: {{catalog: {{type: sql, uri: \"{}\", warehouse: \"{}\"}}, namespace: test, table: products}}\n",
        regions.display(),
        sink.uri,
        sink.warehouse
    );

    let mut source = None;
    for wave in QUERIES.chunks(WAVE) {
        let mut jobs = vec![];
        for (name, sql) in wave {
            // One batch reads every record, so each batch's aggregates are the whole
            // input's.
            let spec = TestCluster::per_batch(&cluster.spec(
                name,
                "orders",
                sql,
                "{available_now: true}",
                "",
            ))
            .patched(
                "parallelism: {max_records_per_task: 20000, min_records_per_task: 1}",
                PARALLELISM,
            ) + &tables;
            let job = cluster
                .submit(&spec)
                .await
                .unwrap_or_else(|e| panic!("{name}: {}", e.message()));
            jobs.push((name, sql, spec, job));
        }
        for (name, sql, spec, job) in jobs {
            let status = cluster
                .wait_for(&job, Duration::from_secs(300), |s| s.state != "RUNNING")
                .await
                .unwrap();
            assert_eq!(
                status.state,
                "FINISHED",
                "{name}: {status:?}\n{}",
                cluster.logs_tail(30)
            );
            let source = match &source {
                Some(batches) => batches,
                None => source
                    .insert(source_batches(&cluster, &JobSpec::parse(&spec).unwrap()).unwrap()),
            };
            let expected = expected_rows(sql, source, &products, &regions)
                .await
                .unwrap();
            assert!(
                !expected.is_empty(),
                "{name}: the query must select something"
            );
            let actual = normalized_rows(&cluster.table_rows(&spec).await.unwrap());
            assert_eq!(
                actual.len(),
                expected.len(),
                "{name} on {executors} executors: row count"
            );
            assert_eq!(actual, expected, "{name} on {executors} executors");
        }
    }
    assert!(QUERIES.len() >= 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_match_single_process_datafusion_on_2_executors() {
    queries_match_single_process_datafusion(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_match_single_process_datafusion_on_3_executors() {
    queries_match_single_process_datafusion(3).await;
}
