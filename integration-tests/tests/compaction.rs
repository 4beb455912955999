//! Compaction while streaming: a table fed by many small batches keeps few data files and
//! manifests, every replace snapshot reads the same rows as the snapshot before it (with
//! the `iceberg` crate and with pyiceberg), and a compaction killed at any step (executor
//! mid-rewrite, driver before or after the replace commit) leaves the table correct and
//! no stray file.

use std::collections::HashSet;

use futures::TryStreamExt;
use iceberg::expr::Reference;
use iceberg::spec::{Datum, Operation};
use iceberg::table::Table;
use sluice_integration_tests::check::{self, FILTER_SQL};
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;

const PARTITIONS: i32 = 4;
const EVENTS: u64 = 1_600;

/// A spec over `orders` compacting every 4 files of a size, 40 offsets a batch, with
/// `table_extra` YAML lines for the sink table.
fn spec(cluster: &TestCluster, name: &str, trigger: &str, table_extra: &str) -> String {
    let table = format!("    table: {}\n", name.replace('-', "_"));
    let spec = cluster.spec(
        name,
        "orders",
        FILTER_SQL,
        trigger,
        "    max_offsets_per_trigger: 40",
    );
    assert!(spec.contains(&table));
    spec.patched(
        &table,
        &format!("{table}    compaction: {{min_files: 4}}\n{table_extra}"),
    )
}

/// The order ids snapshot `snapshot_id` of `table` reads, sorted.
async fn order_ids_at(table: &Table, snapshot_id: i64) -> Vec<String> {
    let batches: Vec<arrow::array::RecordBatch> = table
        .scan()
        .snapshot_id(snapshot_id)
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut ids: Vec<String> = check::rows(&batches).into_iter().map(|r| r.2).collect();
    ids.sort();
    ids
}

/// Every replace snapshot still in the table reads what its parent read.
async fn assert_replaces_change_no_rows(table: &Table) -> usize {
    let mut replaces = 0;
    for snapshot in table.metadata().snapshots() {
        if snapshot.summary().operation != Operation::Replace {
            continue;
        }
        let Some(parent) = snapshot.parent_snapshot_id() else {
            continue;
        };
        if table.metadata().snapshot_by_id(parent).is_none() {
            continue;
        }
        replaces += 1;
        assert_eq!(
            order_ids_at(table, snapshot.snapshot_id()).await,
            order_ids_at(table, parent).await,
            "replace snapshot {} changed the rows",
            snapshot.snapshot_id()
        );
    }
    replaces
}

/// Live data files and manifests of the table's current snapshot.
async fn files_and_manifests(table: &Table) -> (usize, usize) {
    let live = sluice_iceberg::rewrite::live_files(table).await.unwrap();
    let current = table.metadata().current_snapshot().unwrap();
    let manifests = table
        .manifest_list_reader(current)
        .load()
        .await
        .unwrap()
        .entries()
        .len();
    (live.len(), manifests)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_fed_every_100_ms_stays_compact_and_reads_the_same_rows() {
    let cluster = TestCluster::start("orders", PARTITIONS, 2).await.unwrap();
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS)
        .unwrap();
    // Partitioned by Kafka partition: each batch writes a file per partition, and each
    // partition is compacted on its own.
    let spec = spec(
        &cluster,
        "compacted",
        "{processing_time: 100ms}",
        "    partition_by: [kafka_partition]\n",
    );
    let job = cluster.submit(&spec).await.unwrap();
    let batches = (EVENTS / 40) as i64;
    let status = cluster
        .wait_for(&job, std::time::Duration::from_secs(120), |s| {
            s.last_committed_batch + 1 >= batches
        })
        .await
        .unwrap();
    cluster.stop_and_wait(&job).await.unwrap();

    let rows = cluster.table_rows(&spec).await.unwrap();
    check::assert_exactly_once(
        check::rows(&rows),
        check::expected_rows(EVENTS, PARTITIONS),
        || cluster.logs_tail(40),
    );
    let table = cluster.sink_table(&spec).await.unwrap();
    let (files, manifests) = files_and_manifests(&table).await;
    // Without compaction: a file per partition and a manifest per batch (160 and 40).
    assert!(
        files <= 4 * 6 && manifests <= 6,
        "{files} live data files and {manifests} manifests after {batches} batches"
    );
    // Rewritten files keep their partition: a filtered scan still prunes.
    let predicate = Reference::new("kafka_partition").equal_to(Datum::int(2));
    let (read, all, pruned) = cluster.pruned_scan(&spec, predicate).await.unwrap();
    assert!(read < all, "the scan reads {read} of {all} files");
    assert!(check::rows(&pruned).iter().all(|row| row.0 == 2));
    assert_eq!(
        check::rows(&pruned).len(),
        check::expected_rows(EVENTS, PARTITIONS)
            .iter()
            .filter(|row| row.0 == 2)
            .count()
    );
    let replaces = assert_replaces_change_no_rows(&table).await;
    eprintln!(
        "{batches} batches: {files} live files, {manifests} manifests, {replaces} compactions"
    );
    assert!(replaces >= 5, "{replaces} compactions in {batches} batches");
    let stray = cluster.uncommitted_files(&spec).await.unwrap();
    assert!(stray.is_empty(), "stray files: {stray:?}");

    // Progress and /metrics count what was rewritten.
    let compacted: u32 = status
        .recent_batches
        .iter()
        .map(|b| b.files_compacted)
        .sum();
    assert!(compacted > 0, "progress records show compactions");
    let metric = cluster
        .driver_metric(r#"sluice_compacted_files_total{job="compacted"}"#)
        .await
        .unwrap();
    assert!(metric >= compacted as f64);

    // pyiceberg plans every replace snapshot and the current one with the same records.
    let dir = cluster.dir.path().display();
    let script = format!(
        r#"
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("{catalog}", uri="sqlite:///{dir}/catalog.db", warehouse="file://{dir}/warehouse")
table = catalog.load_table("test.compacted")
def records(snapshot_id=None):
    return sum(t.file.record_count for t in table.scan(snapshot_id=snapshot_id).plan_files())
replaces = 0
for snapshot in table.snapshots():
    parent = snapshot.parent_snapshot_id
    if snapshot.summary.operation.value == "replace" and table.snapshot_by_id(parent) is not None:
        assert records(snapshot.snapshot_id) == records(parent), snapshot.snapshot_id
        replaces += 1
print(records(), len(list(table.scan().plan_files())), replaces)
"#,
        catalog = sluice_core::spec::DEFAULT_CATALOG_NAME,
    );
    let stdout = TestCluster::python(&script);
    let fields: Vec<usize> = stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields[0], rows.iter().map(|b| b.num_rows()).sum::<usize>());
    assert_eq!(fields[1], files, "pyiceberg plans the live files");
    assert!(fields[2] > 0, "pyiceberg reads the replace snapshots");
}

/// Runs an `available_now` job compacting every 4 files, with the first driver or the
/// first executor armed at `point` of compaction 1 (a driver is restarted once it died),
/// and checks the finished job's table.
async fn compaction_killed_at(point: &str, on_executor: bool) {
    let armed = format!("{point}@1");
    let failpoints = [(sluice_core::failpoint::FAILPOINTS_ENV, armed.as_str())];
    let mut cluster = if on_executor {
        let mut cluster = TestCluster::start("orders", PARTITIONS, 0).await.unwrap();
        cluster.start_executor(&failpoints).unwrap();
        cluster.start_executor(&[]).unwrap();
        cluster
    } else {
        TestCluster::start_with_first_driver_env("orders", PARTITIONS, 2, 1, &failpoints)
            .await
            .unwrap()
    };
    cluster
        .produce_orders("orders", PARTITIONS, 0, EVENTS / 2)
        .unwrap();
    let name = format!("killed-{}", point.replace('_', "-"));
    // Partitioned: the files to clean up are in partition directories.
    let spec = spec(
        &cluster,
        &name,
        "{available_now: true}",
        "    partition_by: [kafka_partition]\n",
    );
    let job = cluster.submit(&spec).await.unwrap();
    if on_executor {
        cluster
            .wait_executor_exit(
                0,
                std::time::Duration::from_secs(90),
                &format!("at {point}"),
            )
            .await;
    } else {
        cluster
            .wait_driver_exit(std::time::Duration::from_secs(90))
            .await
            .unwrap();
        cluster.start_driver().unwrap();
        cluster.wait_for_driver().await.unwrap();
    }
    cluster.wait_until_finished(&job).await;

    let rows = cluster.table_rows(&spec).await.unwrap();
    check::assert_exactly_once(
        check::rows(&rows),
        check::expected_rows(EVENTS / 2, PARTITIONS),
        || cluster.logs_tail(40),
    );
    let table = cluster.sink_table(&spec).await.unwrap();
    assert!(
        assert_replaces_change_no_rows(&table).await > 0,
        "compactions ran"
    );
    let stray = cluster.uncommitted_files(&spec).await.unwrap();
    assert!(
        stray.is_empty(),
        "stray files after a kill at {point}: {stray:?}"
    );
    // Compaction 1's files are in the table if and only if its snapshot is.
    let committed_1 =
        sluice_iceberg::rewrite::find_compaction_in_ancestry(&table, &name, 1).is_some();
    let names: HashSet<String> = cluster
        .committed_file_names(&spec)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let has_c1 = names.iter().any(|n| n.starts_with(&format!("{name}.c1.")));
    assert!(
        !has_c1 || committed_1,
        "compaction 1's files are live only when it committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executor_killed_mid_rewrite_leaves_the_table_correct() {
    compaction_killed_at(sluice_core::failpoint::EXECUTOR_REWRITE_WRITTEN, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_before_the_replace_commit_leaves_the_table_correct() {
    compaction_killed_at(sluice_core::failpoint::COMPACTION_FILES_WRITTEN, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_driver_killed_after_the_replace_commit_leaves_the_table_correct() {
    compaction_killed_at(sluice_core::failpoint::COMPACTION_COMMITTED, false).await;
}
