//! Partitioned sinks: `sink.iceberg.partition_by` creates the table with that spec, every
//! data file holds one partition value and says which, so a filtered scan reads only the
//! matching files; an existing table partitioned otherwise is written by its own spec.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use iceberg::expr::Reference;
use iceberg::spec::Datum;
use sluice_core::spec::JobSpec;
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;

const PARTITIONS: i32 = 2;
const EVENTS: u64 = 3_000;
const SQL: &str = "SELECT order_id, customer_id, country, amount, ts FROM source";

/// Rows per country in `batches`.
fn countries(batches: &[arrow::array::RecordBatch]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for batch in batches {
        let column =
            arrow::compute::cast(batch.column_by_name("country").unwrap(), &DataType::Utf8)
                .unwrap();
        let column = column.as_string::<i32>();
        for i in 0..column.len() {
            *out.entry(column.value(i).to_string()).or_default() += 1;
        }
    }
    out
}

async fn rows_by_country_with_pruning(cluster: &TestCluster, spec: &str) {
    let rows = cluster.table_rows(spec).await.unwrap();
    sluice_integration_tests::check::assert_every_order_once(&rows, EVENTS, PARTITIONS, None);
    let all = countries(&rows);
    let predicate = Reference::new("country").equal_to(Datum::string("DE"));
    let (read, files, rows) = cluster.pruned_scan(spec, predicate).await.unwrap();
    assert!(read < files, "the scan reads {read} of {files} files");
    assert_eq!(
        countries(&rows),
        BTreeMap::from([("DE".to_string(), all["DE"])]),
        "the files read hold exactly the DE rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_sink_writes_a_file_per_partition_value_and_scans_prune() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster
        .spec(
            "partitioned",
            "orders",
            SQL,
            "{available_now: true}",
            "    max_offsets_per_trigger: 1000",
        )
        .patched(
            "    table: partitioned\n",
            "    table: partitioned\n    partition_by: [day(ts), bucket(4, customer_id), country]\n",
        );
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    rows_by_country_with_pruning(&cluster, &spec).await;

    // pyiceberg (another implementation) reads the files' partition values and prunes
    // the same way. It plans from metadata only (reading rows would need pyarrow).
    let dir = cluster.dir.path().display();
    let script = format!(
        r#"
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("{catalog}", uri="sqlite:///{dir}/catalog.db", warehouse="file://{dir}/warehouse")
table = catalog.load_table("test.partitioned")
de = list(table.scan(row_filter="country == 'DE'").plan_files())
every = list(table.scan().plan_files())
# Partition fields: ts_day, customer_id_bucket_4, country.
print(len(de), len(every), sum(t.file.record_count for t in every), all(t.file.partition[2] == "DE" for t in de))
"#,
        catalog = sluice_core::spec::DEFAULT_CATALOG_NAME,
    );
    let stdout = TestCluster::python(&script);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    let (read, files): (usize, usize) = (fields[0].parse().unwrap(), fields[1].parse().unwrap());
    assert!(
        read > 0 && read < files,
        "pyiceberg plans {read} of {files} files"
    );
    assert_eq!(
        fields[2],
        EVENTS.to_string(),
        "the files' record counts add up"
    );
    assert_eq!(fields[3], "True", "the planned files are DE's");

    // The table's spec is the one asked for.
    let parsed = JobSpec::parse(&spec).unwrap();
    let catalog = sluice_iceberg::catalog::open_catalog(&parsed.sink.iceberg.catalog)
        .await
        .unwrap();
    let table = catalog
        .load_table(&sluice_iceberg::sink::table_ident(&parsed.sink.iceberg))
        .await
        .unwrap();
    let fields: Vec<String> = table
        .metadata()
        .default_partition_spec()
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name, f.transform))
        .collect();
    assert_eq!(
        fields,
        [
            "ts_day day",
            "customer_id_bucket_4 bucket[4]",
            "country identity"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_table_partitioned_otherwise_is_written_by_its_own_spec() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let spec = cluster.spec(
        "foreign",
        "orders",
        SQL,
        "{available_now: true}",
        "    max_offsets_per_trigger: 1000",
    );
    // Someone else created the table, partitioned by country and a truncated order id.
    let parsed = JobSpec::parse(&spec).unwrap();
    let catalog = sluice_iceberg::catalog::open_catalog(&parsed.sink.iceberg.catalog)
        .await
        .unwrap();
    let schema = sluice_plan::plan_job(&parsed).await.unwrap().output_schema;
    let foreign = ["country", "truncate(3, order_id)"]
        .map(|f| sluice_core::partition::PartitionField::parse(f).unwrap());
    sluice_iceberg::sink::ensure_table(
        catalog.as_ref(),
        &sluice_iceberg::sink::table_ident(&parsed.sink.iceberg),
        &schema,
        &foreign,
    )
    .await
    .unwrap();
    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    rows_by_country_with_pruning(&cluster, &spec).await;
}
