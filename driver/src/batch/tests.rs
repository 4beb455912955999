//! Every transition of the batch protocol against an in-memory checkpoint store (whose
//! fence a test can take away) and a real SQL catalog on a temporary SQLite file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::checkpoint::{CheckpointStore, JobLog};
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
use async_trait::async_trait;
use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};
use iceberg::table::Table;
use sluice_core::spec::{CatalogSpec, IcebergSinkSpec};
use sluice_iceberg::catalog::{open_catalog, CatalogRef};
use sluice_iceberg::commit::{append_batch_on, find_batch_in_ancestry, CasOutcome};
use sluice_iceberg::data_files::attempt_prefix;
use sluice_iceberg::sink::{data_files_to_json, ensure_table};
use sluice_kafka::offsets::OffsetRange;

use crate::protocol::{BatchPlan, Checkpoint};
use sluice_proto::v1::{PartitionEventTime, TaskSuccess};
use tokio::sync::Mutex;

use super::*;
use crate::error::Error;

impl BatchProtocol {
    /// Drives `state` through the protocol to its end, as the job runner does for one
    /// batch at a time. `checkpoint` is the checkpoint before the batch; `recovered` says
    /// that the state came from [`recover`](BatchProtocol::recover).
    pub(crate) async fn run(
        &mut self,
        state: BatchState,
        checkpoint: &Checkpoint,
        recovered: bool,
        executor: &mut dyn ExecuteBatch,
    ) -> Result<BatchOutcome> {
        let state = match state {
            BatchState::Planned { plan } => execute_logged(&self.log, plan, executor).await?.0,
            state => state,
        };
        self.finish(state, checkpoint, recovered).await
    }
}

pub(crate) const JOB: &str = "orders";

/// A checkpoint store in memory whose leadership a test can revoke.
#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    entries: Mutex<BTreeMap<String, String>>,
    pub(crate) deposed: AtomicBool,
}

impl MemoryStore {
    fn fenced(&self) -> Result<()> {
        if self.deposed.load(Ordering::SeqCst) {
            return Err(Error::Fenced {
                message: "test: leadership revoked".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<String>> {
        Ok(self.entries.lock().await.get(key).cloned())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let entries = self.entries.lock().await;
        Ok(entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn last(&self, prefix: &str) -> Result<Option<(String, String)>> {
        Ok(self.list(prefix).await?.pop())
    }

    async fn put_all(&self, entries: Vec<(String, String)>) -> Result<()> {
        self.fenced()?;
        self.entries.lock().await.extend(entries);
        Ok(())
    }

    async fn put_new(&self, key: &str, value: String) -> Result<bool> {
        self.fenced()?;
        let mut entries = self.entries.lock().await;
        if entries.contains_key(key) {
            return Ok(false);
        }
        entries.insert(key.to_string(), value);
        Ok(true)
    }

    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()> {
        self.fenced()?;
        self.entries
            .lock()
            .await
            .retain(|k, _| !(k.starts_with(prefix) && k.as_str() < before));
        Ok(())
    }

    fn term(&self) -> i64 {
        7
    }

    async fn check_fence(&self) -> Result<()> {
        self.fenced()
    }
}

/// A catalog on a temporary SQLite file with the job's sink table.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) store: Arc<MemoryStore>,
    pub(crate) catalog: CatalogRef,
    pub(crate) sink: IcebergSinkSpec,
    /// The sink table as first created (a stale copy once anything committed).
    pub(crate) created: Table,
}

impl Fixture {
    pub(crate) async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let sink = IcebergSinkSpec {
            catalog: CatalogSpec {
                catalog_type: "sql".into(),
                uri: format!("sqlite://{}/catalog.db", dir.path().display()),
                warehouse: format!("file://{}/warehouse", dir.path().display()),
                name: None,
                properties: Default::default(),
            },
            namespace: "shop".into(),
            table: "orders".into(),
            dead_letter_table: None,
            target_file_size: None,
            parquet: Default::default(),
            partition_by: vec![],
            compaction: Default::default(),
        };
        let catalog = open_catalog(&sink.catalog).await.unwrap();
        let schema = ArrowSchema::new(vec![Field::new("a", DataType::Int64, true)]);
        let ident = iceberg::TableIdent::from_strs(["shop", "orders"]).unwrap();
        let created = ensure_table(catalog.as_ref(), &ident, &schema, &[])
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            store: Arc::new(MemoryStore::default()),
            catalog,
            sink,
            created,
        }
    }

    pub(crate) fn log(&self) -> JobLog {
        JobLog::new(self.store.clone(), JOB)
    }

    fn protocol(&self) -> BatchProtocol {
        BatchProtocol::new(JOB.into(), self.log(), SinkTables::new(&self.sink, false))
    }

    pub(crate) async fn table(&self) -> Table {
        self.catalog
            .load_table(self.created.identifier())
            .await
            .unwrap()
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        let location = self.created.metadata().location();
        PathBuf::from(location.strip_prefix("file://").unwrap()).join("data")
    }

    /// Writes an (empty) data file of batch `batch` under leader term `term` and returns
    /// its metadata as an executor would.
    pub(crate) fn write_file(&self, batch: i64, term: i64) -> (String, String) {
        let name = format!(
            "{}-00000.parquet",
            attempt_prefix(JOB, BatchId::new(batch), term, 0, 1)
        );
        std::fs::create_dir_all(self.data_dir()).unwrap();
        std::fs::write(self.data_dir().join(&name), b"").unwrap();
        let file = DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!(
                "{}/data/{name}",
                self.created.metadata().location()
            ))
            .file_format(DataFileFormat::Parquet)
            .record_count(10)
            .file_size_in_bytes(100)
            .build()
            .unwrap();
        let json = data_files_to_json(&self.created, vec![file])
            .unwrap()
            .remove(0);
        (name, json)
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        self.data_dir().join(name).exists()
    }

    /// Commits batch `batch` directly, as another driver's attempt would.
    pub(crate) async fn commit_elsewhere(&self, batch: i64, files: Vec<String>) -> Table {
        let base = self.table().await;
        let files = sluice_iceberg::sink::data_files_from_json(&base, &files).unwrap();
        match append_batch_on(
            self.catalog.clone(),
            &base,
            JOB,
            BatchId::new(batch),
            files,
            &Default::default(),
        )
        .await
        .unwrap()
        {
            CasOutcome::Committed(table) => *table,
            CasOutcome::Conflict => panic!("unexpected conflict"),
        }
    }
}

fn plan(batch: i64) -> BatchPlan {
    let ranges = vec![OffsetRange {
        topic: "t".into(),
        partition: 0,
        start: batch * 10,
        end: batch * 10 + 10,
    }];
    BatchPlan::kafka(BatchId::new(batch), "source", ranges, 0)
}

fn checkpoint_before(batch: i64) -> Checkpoint {
    Checkpoint {
        batch_id: BatchId::new(batch - 1),
        ..Checkpoint::initial_kafka(
            "source",
            [("t".to_string(), [(0, batch * 10)].into())].into(),
        )
    }
}

/// An executor that hands back prepared data files and records the terms it was given.
struct FakeExecution {
    files: Vec<String>,
    terms: Vec<i64>,
    /// Runs during execution (e.g. checks that files still exist).
    during: Option<Box<dyn FnMut() + Send>>,
    /// The highest event time the tasks report for partition t/0.
    max_event_time_ms: Option<i64>,
}

impl FakeExecution {
    fn new(files: Vec<String>) -> FakeExecution {
        FakeExecution {
            files,
            terms: vec![],
            during: None,
            max_event_time_ms: None,
        }
    }
}

#[async_trait]
impl ExecuteBatch for FakeExecution {
    async fn execute(&mut self, _plan: &BatchPlan, term: i64) -> Result<Executed> {
        self.terms.push(term);
        if let Some(during) = self.during.as_mut() {
            during();
        }
        Ok(Executed {
            tasks: vec![task_with_event_time(
                self.files.clone(),
                self.max_event_time_ms,
            )],
            retried: false,
            crashes: 0,
        })
    }
}

/// A task result with `files` and, when given, the highest event time of partition t/0.
fn task_with_event_time(files: Vec<String>, max_event_time_ms: Option<i64>) -> TaskSuccess {
    TaskSuccess {
        data_files_json: files,
        output_rows: 10,
        max_event_times: max_event_time_ms
            .map(|ms| PartitionEventTime {
                topic: "t".into(),
                partition: 0,
                max_event_time_ms: ms,
            })
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

fn batch_snapshots(table: &Table, batch: i64) -> usize {
    table
        .metadata()
        .snapshots()
        .filter(|s| {
            s.summary()
                .additional_properties
                .get("sluice.batch-id")
                .map(String::as_str)
                == Some(&batch.to_string())
        })
        .count()
}

#[tokio::test]
async fn a_planned_batch_is_executed_committed_checkpointed_under_the_leader_term() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    let (name, json) = fx.write_file(0, 7);
    let state = protocol.log_plan(plan(0)).await.unwrap();
    let mut execution = FakeExecution::new(vec![json]);
    let outcome = protocol
        .run(state, &checkpoint_before(0), false, &mut execution)
        .await
        .unwrap();
    assert_eq!(execution.terms, vec![7], "tasks run under the store's term");
    assert!(outcome.appended);
    assert_eq!(outcome.checkpoint.batch_id, BatchId::new(0));
    assert_eq!(outcome.checkpoint.get("t", 0), Some(10));
    let table = fx.table().await;
    assert!(find_batch_in_ancestry(&table, JOB, BatchId::new(0)).is_some());
    assert_eq!(batch_snapshots(&table, 0), 1);
    assert!(fx.exists(&name));
    let log = fx.log();
    assert_eq!(
        log.checkpoint().await.unwrap().unwrap().batch_id,
        BatchId::new(0)
    );
    assert!(log.is_committed(BatchId::new(0)).await.unwrap());
    // Nothing is pending any more.
    assert!(protocol
        .recover(&outcome.checkpoint)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_batch_another_attempt_committed_on_a_newer_table_is_recorded_not_appended_again() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    // This driver reads the table (caching it) and plans batch 0.
    protocol.sink.main_table().await.unwrap();
    let state = protocol.log_plan(plan(0)).await.unwrap();
    let (mine, my_json) = fx.write_file(0, 7);
    // Meanwhile an earlier leader's attempt (term 3) commits batch 0: our cached table is
    // now stale and does not show it.
    let (theirs, their_json) = fx.write_file(0, 3);
    fx.commit_elsewhere(0, vec![their_json]).await;
    let mut execution = FakeExecution::new(vec![my_json]);
    let outcome = protocol
        .run(state, &checkpoint_before(0), false, &mut execution)
        .await
        .unwrap();
    assert!(!outcome.appended, "the batch must not be appended twice");
    let table = fx.table().await;
    assert_eq!(
        batch_snapshots(&table, 0),
        1,
        "batch 0 is in exactly one snapshot"
    );
    assert!(fx.log().is_committed(BatchId::new(0)).await.unwrap());
    assert!(fx.exists(&theirs), "the committed attempt's file is kept");
    assert!(!fx.exists(&mine), "the discarded attempt's file is deleted");
}

#[tokio::test]
async fn a_commit_on_a_table_that_moved_on_without_the_batch_is_made_on_the_new_state() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    protocol.sink.main_table().await.unwrap();
    let state = protocol.log_plan(plan(0)).await.unwrap();
    // Another job appends to the table after this driver cached it.
    let base = fx.table().await;
    match append_batch_on(
        fx.catalog.clone(),
        &base,
        "other-job",
        BatchId::new(0),
        vec![],
        &Default::default(),
    )
    .await
    .unwrap()
    {
        CasOutcome::Committed(_) => {}
        CasOutcome::Conflict => panic!("unexpected conflict"),
    }
    let (_, json) = fx.write_file(0, 7);
    let outcome = protocol
        .run(
            state,
            &checkpoint_before(0),
            false,
            &mut FakeExecution::new(vec![json]),
        )
        .await
        .unwrap();
    assert!(outcome.appended);
    let table = fx.table().await;
    assert_eq!(table.metadata().snapshots().count(), 2);
    assert!(find_batch_in_ancestry(&table, JOB, BatchId::new(0)).is_some());
    assert!(find_batch_in_ancestry(&table, "other-job", BatchId::new(0)).is_some());
}

#[tokio::test]
async fn a_driver_whose_fence_is_gone_commits_nothing_to_the_table_or_the_checkpoint() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    let state = protocol.log_plan(plan(0)).await.unwrap();
    let (name, json) = fx.write_file(0, 7);
    let mut execution = FakeExecution::new(vec![json]);
    let store = fx.store.clone();
    // Deposed while its tasks run.
    execution.during = Some(Box::new(move || {
        store.deposed.store(true, Ordering::SeqCst)
    }));
    let error = protocol
        .run(state, &checkpoint_before(0), false, &mut execution)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Fenced { .. }), "{error}");
    let table = fx.table().await;
    assert_eq!(table.metadata().snapshots().count(), 0, "nothing committed");
    assert!(fx.log().checkpoint().await.unwrap().is_none());
    assert!(
        fx.exists(&name),
        "files are not deleted by a deposed driver"
    );
}

#[tokio::test]
async fn recovery_records_a_batch_found_in_the_table_and_reruns_one_that_is_not() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    let checkpoint = checkpoint_before(0);
    assert!(protocol.recover(&checkpoint).await.unwrap().is_none());
    protocol.log_plan(plan(0)).await.unwrap();
    match protocol.recover(&checkpoint).await.unwrap() {
        Some(BatchState::Planned { plan: logged }) => assert_eq!(logged, plan(0)),
        other => panic!("expected a re-run, got {other:?}"),
    }
    let (_, json) = fx.write_file(0, 3);
    let table = fx.commit_elsewhere(0, vec![json]).await;
    let snapshot = table.metadata().current_snapshot_id().unwrap();
    let state = protocol.recover(&checkpoint).await.unwrap();
    match &state {
        Some(BatchState::Committed {
            plan: logged,
            snapshot_id,
            appended: false,
            ..
        }) => {
            assert_eq!(logged, &plan(0));
            assert_eq!(*snapshot_id, snapshot);
        }
        other => panic!("expected a found commit, got {other:?}"),
    }
    let outcome = protocol
        .run(
            state.unwrap(),
            &checkpoint,
            true,
            &mut FakeExecution::new(vec![]),
        )
        .await
        .unwrap();
    assert_eq!(outcome.checkpoint.batch_id, BatchId::new(0));
    assert!(fx.log().is_committed(BatchId::new(0)).await.unwrap());
    assert_eq!(batch_snapshots(&fx.table().await, 0), 1);
}

#[tokio::test]
async fn an_earlier_leaders_files_survive_a_rerun_until_the_batch_is_committed() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    let checkpoint = checkpoint_before(0);
    protocol.log_plan(plan(0)).await.unwrap();
    // A paused leader of term 3 wrote its files and may still commit them.
    let (paused, _) = fx.write_file(0, 3);
    let state = protocol.recover(&checkpoint).await.unwrap().unwrap();
    let (mine, json) = fx.write_file(0, 7);
    let mut execution = FakeExecution::new(vec![json]);
    let probe = fx.data_dir().join(&paused);
    let survived = Arc::new(AtomicBool::new(false));
    let seen = survived.clone();
    execution.during = Some(Box::new(move || {
        seen.store(probe.exists(), Ordering::SeqCst);
    }));
    protocol
        .run(state, &checkpoint, true, &mut execution)
        .await
        .unwrap();
    assert!(
        survived.load(Ordering::SeqCst),
        "the paused leader's file was deleted before the batch was committed"
    );
    assert!(fx.exists(&mine));
    assert!(
        !fx.exists(&paused),
        "garbage is deleted once the batch is committed"
    );
}

#[tokio::test]
async fn a_batch_without_output_still_moves_the_table_on() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    let state = protocol.log_plan(plan(0)).await.unwrap();
    protocol
        .run(
            state,
            &checkpoint_before(0),
            false,
            &mut FakeExecution::new(vec![]),
        )
        .await
        .unwrap();
    // A stale attempt of the same batch with output now conflicts and finds it.
    let stale = fx.created.clone();
    let (_, json) = fx.write_file(0, 3);
    let files = sluice_iceberg::sink::data_files_from_json(&stale, &[json]).unwrap();
    let outcome = append_batch_on(
        fx.catalog.clone(),
        &stale,
        JOB,
        BatchId::new(0),
        files,
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(matches!(outcome, CasOutcome::Conflict));
    assert_eq!(batch_snapshots(&fx.table().await, 0), 1);
}

/// The watermark after a batch is the same whether this driver ran the batch or found it
/// in the table after another attempt committed it: the batch's event times travel in its
/// snapshot's summary.
#[tokio::test]
async fn the_watermark_moves_on_with_each_batch_and_survives_recovery() {
    let fx = Fixture::new().await;
    let mut protocol = fx
        .protocol()
        .with_watermark(Some(WatermarkRule::delay(100)));
    let state = protocol.log_plan(plan(0)).await.unwrap();
    let mut execution = FakeExecution::new(vec![]);
    execution.max_event_time_ms = Some(5_000);
    let first = protocol
        .run(state, &checkpoint_before(0), false, &mut execution)
        .await
        .unwrap();
    assert_eq!(first.checkpoint.watermark_ms, Some(4_900));

    // Another attempt commits batch 1 (event times up to 9,000) and dies before its
    // checkpoint.
    let mut other = fx
        .protocol()
        .with_watermark(Some(WatermarkRule::delay(100)));
    other.log_plan(plan(1)).await.unwrap();
    let tasks = [task_with_event_time(vec![], Some(9_000))];
    assert!(matches!(
        other.commit(plan(1), &tasks).await.unwrap(),
        BatchState::Committed { .. }
    ));

    let state = protocol.recover(&first.checkpoint).await.unwrap().unwrap();
    let recovered = protocol
        .run(
            state,
            &first.checkpoint,
            true,
            &mut FakeExecution::new(vec![]),
        )
        .await
        .unwrap();
    assert!(!recovered.appended, "found in the table, not run again");
    assert_eq!(recovered.checkpoint.watermark_ms, Some(8_900));
    assert_eq!(
        fx.log().checkpoint().await.unwrap().unwrap().watermark_ms,
        Some(8_900),
        "the watermark is checkpointed with the batch"
    );
}

/// A leader of term 3 logged batch 0, ran it, logged batch 1 and ran it while 0 was
/// committing, and died: both are re-run in order, each with its logged ranges, and its
/// files of both are deleted once the new leader's commits are in the table.
#[tokio::test]
async fn two_batches_in_flight_are_recovered_in_order() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    protocol.log_plan(plan(0)).await.unwrap();
    log_plan_to(&fx.log(), plan(1)).await.unwrap();
    let (dead_0, _) = fx.write_file(0, 3);
    let (dead_1, _) = fx.write_file(1, 3);

    let mut checkpoint = checkpoint_before(0);
    for batch in [0, 1] {
        let state = protocol.recover(&checkpoint).await.unwrap();
        match &state {
            Some(BatchState::Planned { plan: logged }) => assert_eq!(logged, &plan(batch)),
            other => panic!("expected batch {batch} to be re-run, got {other:?}"),
        }
        let (_, json) = fx.write_file(batch, 7);
        let outcome = protocol
            .run(
                state.unwrap(),
                &checkpoint,
                true,
                &mut FakeExecution::new(vec![json]),
            )
            .await
            .unwrap();
        checkpoint = outcome.checkpoint;
        assert_eq!(checkpoint.sources, checkpoint_before(batch + 1).sources);
    }
    assert!(protocol.recover(&checkpoint).await.unwrap().is_none());
    let table = fx.table().await;
    assert_eq!(batch_snapshots(&table, 0), 1);
    assert_eq!(batch_snapshots(&table, 1), 1);
    assert!(!fx.exists(&dead_0) && !fx.exists(&dead_1));
}

/// The leader committed batch 0 to the table and died before its checkpoint, with batch
/// 1 logged: 0 is recorded (not appended again), then 1 is re-run.
#[tokio::test]
async fn a_committed_batch_is_recorded_before_the_one_logged_after_it_runs() {
    let fx = Fixture::new().await;
    let mut protocol = fx.protocol();
    protocol.log_plan(plan(0)).await.unwrap();
    log_plan_to(&fx.log(), plan(1)).await.unwrap();
    let (_, json) = fx.write_file(0, 3);
    fx.commit_elsewhere(0, vec![json]).await;

    let checkpoint = checkpoint_before(0);
    let state = protocol.recover(&checkpoint).await.unwrap();
    assert!(
        matches!(&state, Some(BatchState::Committed { plan: p, appended: false, .. }) if p == &plan(0)),
        "expected batch 0 found in the table, got {state:?}"
    );
    let outcome = protocol
        .run(
            state.unwrap(),
            &checkpoint,
            true,
            &mut FakeExecution::new(vec![]),
        )
        .await
        .unwrap();
    let next = protocol.recover(&outcome.checkpoint).await.unwrap();
    assert!(
        matches!(&next, Some(BatchState::Planned { plan: p }) if p == &plan(1)),
        "expected batch 1 to be re-run, got {next:?}"
    );
    assert_eq!(batch_snapshots(&fx.table().await, 0), 1);
}
