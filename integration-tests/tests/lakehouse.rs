//! Where the table lives: jobs committing through an Iceberg REST catalog, and jobs whose
//! warehouse is S3-compatible object storage, each exactly once, over real processes.

use sluice_core::failpoint::{self, FAILPOINTS_ENV};
use sluice_integration_tests::check::FILTER_SQL;
use sluice_integration_tests::services::{RestCatalogServer, S3Server};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;

const EVENTS: u64 = 20_000;
const PARTITIONS: i32 = 4;
/// Four batches of 5,000 offsets.
const BATCH: &str = "    max_offsets_per_trigger: 5000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_job_commits_every_record_once() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    let rest = RestCatalogServer::start(&cluster.dir.path().join("logs")).unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let catalog = format!("{{type: rest, uri: \"{}\"}}", rest.url());
    let spec = cluster.spec_in_catalog(
        "via-rest",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        BATCH,
        &catalog,
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert_eq!(cluster.committed_batches(&spec).await.unwrap().len(), 4);
    // The catalog's own warehouse holds the table: the server placed it.
    let table_dir = cluster
        .dir
        .path()
        .join("logs/rest-warehouse/test/via_rest/data");
    assert!(
        std::fs::read_dir(&table_dir).unwrap().count() > 0,
        "no data files in {}",
        table_dir.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_that_is_down_is_refused_at_submit() {
    let cluster = TestCluster::start("orders", PARTITIONS, 1).await.unwrap();
    let port = sluice_testkit::free_port();
    let catalog = format!("{{type: rest, uri: \"http://127.0.0.1:{port}\"}}");
    let spec = cluster.spec_in_catalog(
        "rest-down",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        BATCH,
        &catalog,
    );
    let error = cluster.submit(&spec).await.unwrap_err();
    assert!(
        error.message().contains(&format!("127.0.0.1:{port}")),
        "the error names the catalog: {error:?}"
    );
}

/// The warehouse is a bucket. Executor 0 dies after writing its batch-1 files, so the
/// driver must find that attempt's objects by listing the bucket and delete them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_storage_warehouse_commits_once_and_cleans_failed_attempts() {
    let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
    let s3 = S3Server::start(&cluster.dir.path().join("logs"), "lake").unwrap();
    let crash = format!("{}@1", failpoint::EXECUTOR_FILES_WRITTEN);
    cluster
        .start_executor(&[(FAILPOINTS_ENV, crash.as_str())])
        .unwrap();
    cluster.start_executor(&[]).unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let dir = cluster.dir.path().display();
    let catalog = format!(
        r#"{{type: sql, uri: "sqlite://{dir}/catalog.db", warehouse: "s3://{}/warehouse", properties: {}}}"#,
        s3.bucket,
        s3.catalog_properties()
    );
    let spec = cluster.spec_in_catalog(
        "in-bucket",
        "orders",
        FILTER_SQL,
        "{available_now: true}",
        BATCH,
        &catalog,
    );
    let job = cluster.submit(&spec).await.unwrap();
    cluster
        .assert_finished_exactly_once(&job, &spec, EVENTS, PARTITIONS)
        .await;
    assert!(
        cluster.executor_exited(0),
        "executor 0 must have died after writing files"
    );
    // The bucket itself, listed by the store: exactly the files the table's snapshots
    // hold remain (committed files, and files compaction replaced while held).
    let committed = cluster.held_file_names(&spec).await.unwrap();
    let mut objects: Vec<String> = s3
        .keys("warehouse/test/in_bucket/data/")
        .unwrap()
        .iter()
        .map(|key| key.rsplit('/').next().unwrap().to_string())
        .collect();
    objects.sort();
    assert_eq!(
        objects, committed,
        "the bucket holds exactly the files the table's snapshots hold"
    );
    assert!(
        cluster
            .logs_tail(usize::MAX)
            .contains("deleted data files of failed or abandoned attempts"),
        "the crashed attempt's objects were deleted"
    );
    assert!(
        !cluster.dir.path().join("warehouse").exists(),
        "nothing was written to the local disk"
    );
}

/// The commit is a compare-and-swap through a REST catalog too: a driver's append built on
/// a table state that another commit has since moved on is refused by the server (409),
/// never replayed on the newer metadata, so a paused leader cannot commit a batch twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_catalog_refuses_a_commit_built_on_a_stale_table() {
    use arrow::datatypes::{DataType, Field, Schema};
    use iceberg::{NamespaceIdent, TableIdent};
    use sluice_core::BatchId;
    use sluice_iceberg::commit::{append_batch_on, find_batch_in_ancestry, CasOutcome};

    let dir = tempfile::tempdir().unwrap();
    let rest = RestCatalogServer::start(dir.path()).unwrap();
    let spec = sluice_core::spec::CatalogSpec {
        catalog_type: "rest".into(),
        uri: rest.url(),
        warehouse: String::new(),
        name: None,
        properties: Default::default(),
    };
    let catalog = sluice_iceberg::catalog::open_catalog(&spec).await.unwrap();
    let ident = TableIdent::new(NamespaceIdent::new("test".into()), "cas".into());
    let schema = Schema::new(vec![Field::new("n", DataType::Int64, true)]);
    let stale = sluice_iceberg::sink::ensure_table(catalog.as_ref(), &ident, &schema, &[])
        .await
        .unwrap();

    // The standby commits batch 3 on the table as both drivers saw it...
    let committed = append_batch_on(
        catalog.clone(),
        &stale,
        "job",
        BatchId::new(3),
        vec![],
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(matches!(committed, CasOutcome::Committed(_)));
    // ...then the paused leader wakes and commits batch 3 on its stale copy.
    let replay = append_batch_on(
        catalog.clone(),
        &stale,
        "job",
        BatchId::new(3),
        vec![],
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(
        matches!(replay, CasOutcome::Conflict),
        "a stale commit must conflict: {replay:?}"
    );
    let table = catalog.load_table(&ident).await.unwrap();
    assert_eq!(table.metadata().snapshots().count(), 1, "batch 3 once");
    assert!(find_batch_in_ancestry(&table, "job", BatchId::new(3)).is_some());
}

/// `sink.iceberg.target_file_size` rolls a task's output into several data files, and
/// `sink.iceberg.parquet` sets their encoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_roll_at_the_target_size_with_the_chosen_parquet_settings() {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let cluster = TestCluster::start("orders", PARTITIONS, 1).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    let describe = |job: String| {
        let cluster = &cluster;
        async move {
            cluster
                .client()
                .await
                .unwrap()
                .describe_table(sluice_proto::v1::DescribeTableRequest { job_id: job })
                .await
                .unwrap()
                .into_inner()
        }
    };
    let one_batch =
        |name: &str| cluster.spec(name, "orders", FILTER_SQL, "{available_now: true}", "");
    let default_spec = one_batch("default-files");
    let job = cluster.submit(&default_spec).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let default_files = describe(job).await.data_files;

    let small = one_batch("small-files").patched(
        "    table: small_files\n",
        "    table: small_files\n    target_file_size: 16384\n    parquet: {compression: zstd(3), row_group_rows: 100}\n",
    );
    assert!(small.contains("target_file_size: 16384"), "{small}");
    let job = cluster.submit(&small).await.unwrap();
    cluster.wait_until_finished(&job).await;
    let rolled = describe(job).await;
    assert!(
        rolled.data_files > default_files,
        "{} files with a 16 KiB target, {default_files} by default",
        rolled.data_files
    );
    assert_eq!(
        cluster.row_count(&small).await.unwrap(),
        cluster.row_count(&default_spec).await.unwrap()
    );
    let data = cluster.dir.path().join("warehouse/test/small_files/data");
    let file = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let reader = SerializedFileReader::new(std::fs::File::open(&file).unwrap()).unwrap();
    let metadata = reader.metadata();
    assert!(matches!(
        metadata.row_group(0).column(0).compression(),
        parquet::basic::Compression::ZSTD(_)
    ));
    assert!(metadata.row_groups().iter().all(|g| g.num_rows() <= 100));

    let bad = one_batch("bad-codec").patched(
        "    table: bad_codec\n",
        "    table: bad_codec\n    parquet: {compression: brotli}\n",
    );
    let status = cluster.submit(&bad).await.unwrap_err();
    assert!(
        status
            .message()
            .contains("sink.iceberg.parquet.compression"),
        "{}",
        status.message()
    );
}
