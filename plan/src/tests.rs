//! Stage plans run in one process as executors run them (encoded, decoded, one context
//! per task, map outputs exchanged through memory), compared with plain DataFusion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use async_trait::async_trait;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::*;
use sluice_datagen::synthetic::{Order, ORDER_SCHEMA_YAML};
use sluice_kafka::decode::{RawRecord, RecordDecoder};
use sluice_testkit::{normalized_rows, write_regions_parquet};

#[derive(Debug, Default)]
struct MemoryShuffle {
    outputs: Mutex<HashMap<ShuffleKey, Vec<RecordBatch>>>,
}

#[async_trait]
impl ShuffleFetcher for MemoryShuffle {
    async fn fetch(
        &self,
        address: &str,
        key: &ShuffleKey,
    ) -> Result<Vec<RecordBatch>, ShuffleFetchError> {
        self.outputs
            .lock()
            .unwrap()
            .get(key)
            .cloned()
            .ok_or_else(|| ShuffleFetchError {
                stage_id: key.stage_id,
                map_task: key.map_task,
                partition: key.partition,
                address: address.into(),
                message: "no such output".into(),
            })
    }
}

pub(crate) fn spec(sql: &str, shuffle_partitions: u32) -> JobSpec {
    spec_with(
        sql,
        &format!("{{shuffle_partitions: {shuffle_partitions}}}"),
        "",
    )
}

/// A spec with `parallelism` (a YAML map) and extra top-level YAML (e.g. `tables:`).
fn spec_with(sql: &str, parallelism: &str, extra: &str) -> JobSpec {
    JobSpec::parse(&format!(
        r#"
name: plan-test
source:
  kafka:
    bootstrap_servers: "localhost:9092"
    topics: [orders]
    schema: {ORDER_SCHEMA_YAML}
sql: "{sql}"
sink:
  iceberg:
    catalog: {{type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}}
    namespace: ns
    table: t
parallelism: {parallelism}
{extra}
"#
    ))
    .unwrap()
}

/// Three tasks' worth of decoded orders (one Kafka partition each).
fn source_slices(spec: &JobSpec) -> Vec<RecordBatch> {
    let decoder = RecordDecoder::for_job(spec).unwrap();
    (0..3)
        .map(|partition| {
            let records: Vec<RawRecord> = (0..400)
                .map(|offset| RawRecord {
                    offset,
                    timestamp_ms: Some(1_700_000_000_000 + offset),
                    key: None,
                    value: Some(
                        Order::new(
                            partition as u64 * 1000 + offset as u64,
                            1_700_000_000_000 + offset,
                        )
                        .to_json()
                        .into_bytes(),
                    ),
                })
                .collect();
            decoder.decode("orders", partition, &records).unwrap().batch
        })
        .collect()
}

/// Runs `plan` stage by stage, every task in its own decoded copy of the stage plan.
async fn run_distributed(spec: &JobSpec, slices: &[RecordBatch]) -> Vec<RecordBatch> {
    run_distributed_with_state(spec, slices, None).await
}

/// [`run_distributed`], the tasks of the shuffle-state stage carrying `carried`.
async fn run_distributed_with_state(
    spec: &JobSpec,
    slices: &[RecordBatch],
    carried: Option<(u32, Arc<CarriedRows>)>,
) -> Vec<RecordBatch> {
    let plan = plan_job(spec).await.unwrap();
    let base = base_task_context(spec);
    let shuffle = Arc::new(MemoryShuffle::default());
    let mut task_counts: HashMap<u32, u32> = HashMap::new();
    let mut sink = vec![];
    for stage in &plan.stages {
        let bytes = encode_plan(stage.plan.clone()).unwrap();
        // After a hash shuffle, two tasks share the partitions (as with fewer task slots
        // than partitions).
        let tasks: Vec<(Vec<RecordBatch>, Option<Vec<u32>>)> = match stage.kind {
            StageKind::Source => slices.iter().map(|s| (vec![s.clone()], None)).collect(),
            StageKind::Hash(n) => (0..2u32)
                .map(|t| (vec![], Some((0..n as u32).filter(|p| p % 2 == t).collect())))
                .collect(),
            StageKind::Single => vec![(vec![], None)],
        };
        task_counts.insert(stage.id, tasks.len() as u32);
        for (task, (source, partitions)) in tasks.into_iter().enumerate() {
            let inputs = TaskInputs {
                job_id: "j".into(),
                batch_id: 0,
                source,
                partitions,
                shuffle: stage
                    .inputs
                    .iter()
                    .map(|input| {
                        let locations = (0..task_counts[input])
                            .map(|map_task| MapOutputLocation {
                                map_task,
                                flight_address: "memory".into(),
                            })
                            .collect();
                        (*input, locations)
                    })
                    .collect(),
                fetcher: shuffle.clone(),
                carried: carried
                    .as_ref()
                    .filter(|(state_stage, _)| *state_stage == stage.id)
                    .map(|(_, rows)| rows.clone()),
            };
            let context = task_context(&base, inputs);
            let decoded = decode_plan(&bytes, &context).unwrap();
            let outputs = execute_all_partitions(decoded, context).await.unwrap();
            let store = |partition: u32, batches: Vec<RecordBatch>| {
                let key = ShuffleKey {
                    job_id: "j".into(),
                    batch_id: 0,
                    stage_id: stage.id,
                    map_task: task as u32,
                    partition,
                };
                shuffle.outputs.lock().unwrap().insert(key, batches);
            };
            match stage.output {
                StageOutput::Hash(n) => {
                    assert_eq!(outputs.len(), n, "stage {} partitions", stage.id);
                    for (p, batches) in outputs.into_iter().enumerate() {
                        store(p as u32, batches);
                    }
                }
                StageOutput::Single => store(0, outputs.into_iter().flatten().collect()),
                StageOutput::Sink => sink.extend(outputs.into_iter().flatten()),
            }
        }
    }
    sink
}

async fn run_single_process(spec: &JobSpec, slices: &[RecordBatch]) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    for table in &spec.tables {
        let path = table.parquet.as_ref().unwrap();
        ctx.register_parquet(table.name.as_str(), path, Default::default())
            .await
            .unwrap();
    }
    let table = MemTable::try_new(slices[0].schema(), vec![slices.to_vec()]).unwrap();
    ctx.register_table(SOURCE_TABLE, Arc::new(table)).unwrap();
    ctx.sql(&spec.sql).await.unwrap().collect().await.unwrap()
}

async fn assert_same_result(sql: &str) {
    for partitions in [1, 4] {
        let spec = spec(sql, partitions);
        let slices = source_slices(&spec);
        let expected = normalized_rows(&run_single_process(&spec, &slices).await);
        let actual = normalized_rows(&run_distributed(&spec, &slices).await);
        assert!(!expected.is_empty(), "{sql}: no rows to compare");
        assert_eq!(
            actual, expected,
            "{sql} with {partitions} shuffle partitions"
        );
    }
}

#[tokio::test]
async fn distributed_stages_compute_what_one_process_computes() {
    for sql in [
        "SELECT order_id, amount * 2 AS double FROM source WHERE country = 'DE'",
        "SELECT product_id, count(*) AS n, sum(amount) AS revenue, min(amount) AS lo, max(amount) AS hi, avg(amount) AS mean FROM source GROUP BY product_id",
        "SELECT count(*) AS n, count(DISTINCT customer_id) AS customers FROM source",
        "SELECT DISTINCT country FROM source",
        "SELECT country, product_id, count(*) AS n FROM source GROUP BY country, product_id HAVING count(*) > 2",
        "SELECT order_id, amount FROM source ORDER BY amount DESC, order_id LIMIT 7",
        "SELECT order_id, rank() OVER (PARTITION BY country ORDER BY amount DESC, order_id) AS r FROM source",
        "SELECT a.order_id, b.order_id AS other FROM source a JOIN source b ON a.customer_id = b.customer_id AND a.order_id < b.order_id",
        "SELECT country FROM source WHERE amount > 400 UNION SELECT country FROM source WHERE amount < 5",
        "SELECT order_id FROM source WHERE amount > (SELECT avg(amount) * 1.9 FROM source)",
        "SELECT order_id, sum(amount) OVER (ORDER BY order_id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM source",
    ] {
        assert_same_result(sql).await;
    }
}

#[tokio::test]
async fn aggregation_is_cut_at_its_exchange() {
    let spec = spec(
        "SELECT product_id, sum(amount) AS s FROM source GROUP BY product_id",
        4,
    );
    let plan = plan_job(&spec).await.unwrap();
    let kinds: Vec<_> = plan.stages.iter().map(|s| (s.kind, s.output)).collect();
    assert_eq!(
        kinds,
        vec![
            (StageKind::Source, StageOutput::Hash(4)),
            (StageKind::Hash(4), StageOutput::Sink)
        ],
        "{}",
        plan.display()
    );
    let filter = plan_job(&spec_for_filter()).await.unwrap();
    assert_eq!(filter.stages.len(), 1, "{}", filter.display());
}

fn spec_for_filter() -> JobSpec {
    spec("SELECT order_id FROM source WHERE amount > 10", 4)
}

#[tokio::test]
async fn bad_sql_and_statements_are_refused() {
    for sql in [
        "SELECT nope FROM source",
        "SELEC id FROM source",
        "CREATE TABLE t (a INT)",
        "SELECT order_id FROM other",
    ] {
        let err = plan_job(&spec(sql, 4)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidSql { .. }), "{sql}: {err}");
    }
}

#[tokio::test]
async fn the_example_jobs_plan() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut planned = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let spec = JobSpec::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        plan_job(&spec)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        planned += 1;
    }
    assert!(planned >= 2, "examples in {}", dir.display());
}

#[tokio::test]
async fn small_static_tables_are_broadcast_and_large_ones_shuffled() {
    let dir = tempfile::tempdir().unwrap();
    let regions = dir.path().join("regions.parquet");
    write_regions_parquet(&regions).unwrap();
    let regions = regions.display();
    let tables = format!("tables: [{{name: regions, parquet: \"{regions}\"}}]");
    let sql = "SELECT r.region, count(*) AS n, sum(s.amount) AS revenue FROM source s JOIN regions r ON s.country = r.country GROUP BY r.region";
    let mut shapes = vec![];
    for threshold in [10_485_760, 0] {
        let parallelism =
            format!("{{shuffle_partitions: 4, broadcast_threshold_bytes: {threshold}}}");
        let spec = spec_with(sql, &parallelism, &tables);
        let slices = source_slices(&spec);
        let expected = normalized_rows(&run_single_process(&spec, &slices).await);
        let actual = normalized_rows(&run_distributed(&spec, &slices).await);
        assert_eq!(actual, expected, "broadcast threshold {threshold}");
        let plan = plan_job(&spec).await.unwrap();
        shapes.push(
            plan.stages
                .iter()
                .map(|s| (s.kind, s.output))
                .collect::<Vec<_>>(),
        );
    }
    // Broadcast: the stream is read and joined in one stage, then aggregated.
    assert_eq!(
        shapes[0],
        vec![
            (StageKind::Source, StageOutput::Hash(4)),
            (StageKind::Hash(4), StageOutput::Sink)
        ]
    );
    // Shuffled: the table is hash-partitioned by a stage of its own, like the stream.
    assert!(
        shapes[1].contains(&(StageKind::Single, StageOutput::Hash(4))),
        "{:?}",
        shapes[1]
    );
    assert!(shapes[1].len() >= 4, "{:?}", shapes[1]);
}

/// `slices` with the hidden seen column: the first slice as state from earlier batches,
/// the others as the batch's new records.
/// `slices` with the hidden seen column: the first slice seen (the state), the others new.
fn with_seen_column(slices: &[RecordBatch]) -> Vec<RecordBatch> {
    slices
        .iter()
        .enumerate()
        .map(|(i, batch)| mark_seen(batch, i == 0))
        .collect()
}

/// `batch` with the hidden seen column set to `seen` (replaced when present).
fn mark_seen(batch: &RecordBatch, seen: bool) -> RecordBatch {
    use arrow::array::BooleanArray;
    use arrow::datatypes::{DataType, Field, Schema};
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != sluice_core::schema::SEEN_COLUMN)
        .collect();
    let batch = batch.project(&keep).unwrap();
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(
        sluice_core::schema::SEEN_COLUMN,
        DataType::Boolean,
        false,
    ));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from(vec![seen; batch.num_rows()])));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// A job deduplicating `source` by customer, with a watermark on `ts`.
fn dedup_spec(sql: &str) -> JobSpec {
    let mut spec = spec(sql, 4);
    spec.source_mut().watermark = Some(sluice_core::spec::WatermarkSpec {
        column: "ts".into(),
        delay: "10s".into(),
        late: Default::default(),
        idle_timeout: None,
        advance_when_idle: None,
    });
    spec.dedup = Some(sluice_core::spec::DedupSpec {
        key: vec!["customer_id".into()],
        within: None,
    });
    spec
}

/// Per customer, the (ts, partition, offset) of the rows of `batches`: each customer at
/// most once.
fn first_rows(batches: &[RecordBatch]) -> std::collections::BTreeMap<i64, (i64, i32, i64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
    let mut rows = std::collections::BTreeMap::new();
    for batch in batches {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (customers, ts, partitions, offsets) = (
            column("customer_id"),
            column("ts"),
            column("_partition"),
            column("_offset"),
        );
        for row in 0..batch.num_rows() {
            let customer = customers.as_primitive::<Int64Type>().value(row);
            let order = (
                ts.as_primitive::<TimestampMillisecondType>().value(row),
                partitions.as_primitive::<Int32Type>().value(row),
                offsets.as_primitive::<Int64Type>().value(row),
            );
            assert!(
                rows.insert(customer, order).is_none(),
                "customer {customer} twice"
            );
        }
    }
    rows
}

/// Per customer, its least (ts, partition, offset) among the rows of `batches`.
fn least_rows(batches: &[RecordBatch]) -> std::collections::BTreeMap<i64, (i64, i32, i64)> {
    let mut least = std::collections::BTreeMap::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let (customer, order) = first_rows(&[batch.slice(row, 1)]).pop_first().unwrap();
            let best = least.entry(customer).or_insert(order);
            *best = (*best).min(order);
        }
    }
    least
}

#[tokio::test]
async fn dedup_state_after_the_shuffle_drops_remembered_keys_by_lookup() {
    let spec = dedup_spec("SELECT * FROM source");
    let slices = source_slices(&spec);
    let plan = plan_job(&spec).await.unwrap();
    let state = plan.shuffle_state_stages(&spec).pop().unwrap();
    let ShuffleStateKind::DedupRows { key, .. } = &state.kind else {
        panic!("dedup state after the shuffle: {}", plan.display());
    };
    // The first row per key is picked by hashing, not by sorting for a window function.
    let display = plan.display();
    assert!(
        display.contains("FirstRowPerKeyExec") && !display.contains("WindowAggExec"),
        "{display}"
    );
    // State files hold the key and the event time only.
    let state_schema = state.state_schema();
    let state_columns: Vec<&str> = state_schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect();
    assert_eq!(state_columns.len(), 2, "{state_columns:?}");
    assert!(state_columns.contains(&"customer_id") && state_columns.contains(&"ts"));
    // Batch 1: the first slice. What its readers yielded is the state, marked seen.
    let first = Arc::new(CarriedRows {
        stage_id: state.input_stage,
        state: CarriedState::Lookup(DedupLookup {
            key: key.clone(),
            remembered: Arc::new(RowsInMemory::default()),
        }),
        ..Default::default()
    });
    let batch: Vec<RecordBatch> = slices[..1].iter().map(|b| mark_seen(b, false)).collect();
    let mut written =
        run_distributed_with_state(&spec, &batch, Some((state.stage_id, first.clone()))).await;
    let carried: HashMap<u32, Vec<RecordBatch>> = first
        .take_yielded()
        .into_iter()
        .map(|(partition, rows)| {
            let narrowed = rows
                .iter()
                .map(|b| {
                    let columns = state_columns
                        .iter()
                        .map(|c| b.schema().index_of(c).unwrap());
                    b.project(&columns.collect::<Vec<_>>()).unwrap()
                })
                .collect();
            (partition, narrowed)
        })
        .collect();
    let state_rows: usize = carried.values().flatten().map(|b| b.num_rows()).sum();
    // Batch 2: the other slices, starting from that state; the rows of its keys are
    // dropped where they are fetched.
    let second = Arc::new(CarriedRows {
        stage_id: state.input_stage,
        state: CarriedState::Lookup(DedupLookup {
            key: key.clone(),
            remembered: Arc::new(RowsInMemory(carried)),
        }),
        ..Default::default()
    });
    let batch: Vec<RecordBatch> = slices[1..].iter().map(|b| mark_seen(b, false)).collect();
    let later =
        run_distributed_with_state(&spec, &batch, Some((state.stage_id, second.clone()))).await;
    assert!(!first_rows(&written).is_empty() && !first_rows(&later).is_empty());
    written.extend(later);
    // Each customer once over both batches: batch 1's customers with their least row of
    // the first slice, the others with their least row of the later slices.
    let mut expected = least_rows(&slices[..1]);
    for (customer, order) in least_rows(&slices[1..]) {
        expected.entry(customer).or_insert(order);
    }
    assert_eq!(first_rows(&written), expected);
    // The second batch's readers collected only the new keys' rows.
    let yielded: usize = second
        .take_yielded()
        .values()
        .flatten()
        .map(|b| b.num_rows())
        .sum();
    let new_rows: usize = batch.iter().map(|b| b.num_rows()).sum();
    assert!(
        yielded < new_rows,
        "the rows of remembered keys are dropped ({state_rows} remembered)"
    );
}

#[tokio::test]
async fn dedup_keeps_the_earliest_new_row_of_each_key_not_seen_before() {
    let spec = dedup_spec("SELECT * FROM source");
    let raw = source_slices(&spec);
    // State read by source tasks (a job's state from before it moved after the shuffle):
    // the first slice, marked seen, streams in with the new rows.
    let slices = with_seen_column(&raw);
    // Expected: per customer not in the state slice, the new row with the least
    // (ts, partition, offset).
    let seen = least_rows(&raw[..1]);
    let mut expected = least_rows(&raw[1..]);
    let new_rows: usize = raw[1..].iter().map(|b| b.num_rows()).sum();
    let before = expected.len();
    expected.retain(|customer, _| !seen.contains_key(customer));
    assert!(before < new_rows, "duplicates among the new rows");
    assert!(expected.len() < before, "new rows of keys seen before");

    let plan = plan_job(&spec).await.unwrap();
    assert!(
        plan.output_schema
            .index_of(sluice_core::schema::SEEN_COLUMN)
            .is_err(),
        "the query never sees the hidden column"
    );
    // The remembered rows stay where the key's rows meet: the stage after the shuffle by
    // key, with what the window function needs to rank them.
    let state = plan
        .shuffle_state_stages(&spec)
        .pop()
        .expect("the key's rows meet after a shuffle");
    assert!(
        matches!(state.kind, ShuffleStateKind::DedupRows { .. }),
        "{}",
        plan.display()
    );
    assert_eq!(
        plan.stages[state.stage_id as usize].kind,
        StageKind::Hash(4),
        "{}",
        plan.display()
    );
    for column in [sluice_core::schema::SEEN_COLUMN, "ts", "customer_id"] {
        assert!(
            state.schema.index_of(column).is_ok(),
            "{column} in the state"
        );
    }
    assert_eq!(first_rows(&run_distributed(&spec, &slices).await), expected);
}

#[tokio::test]
async fn sessions_are_runs_of_a_keys_rows_less_than_the_gap_apart() {
    use arrow::array::AsArray;
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use std::collections::{BTreeMap, BTreeSet};

    const GAP_MS: i64 = 40;
    let mut spec = spec(
        "SELECT customer_id, window_start, window_end, count(*) AS n FROM source GROUP BY window_start, window_end, customer_id",
        4,
    );
    spec.source_mut().watermark = Some(sluice_core::spec::WatermarkSpec {
        column: "ts".into(),
        delay: "10s".into(),
        late: Default::default(),
        idle_timeout: None,
        advance_when_idle: None,
    });
    spec.session = Some(sluice_core::spec::SessionSpec {
        gap: format!("{GAP_MS}ms"),
        key: vec!["customer_id".into()],
    });
    let slices = source_slices(&spec);
    // Expected: each customer's event times in order, cut where two are a gap apart.
    let mut times: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for batch in &slices {
        let customers = batch.column_by_name("customer_id").unwrap();
        let ts = batch.column_by_name("ts").unwrap();
        for row in 0..batch.num_rows() {
            times
                .entry(customers.as_primitive::<Int64Type>().value(row))
                .or_default()
                .push(ts.as_primitive::<TimestampMillisecondType>().value(row));
        }
    }
    let customers = times.len();
    let mut expected = BTreeSet::new();
    for (customer, mut ts) in times {
        ts.sort_unstable();
        let (mut start, mut count) = (ts[0], 0);
        for (i, t) in ts.iter().enumerate() {
            if i > 0 && *t >= ts[i - 1] + GAP_MS {
                expected.insert((customer, start, ts[i - 1] + GAP_MS, count));
                (start, count) = (*t, 0);
            }
            count += 1;
        }
        expected.insert((customer, start, ts[ts.len() - 1] + GAP_MS, count));
    }
    assert!(
        expected.len() > customers && expected.iter().any(|s| s.3 > 1),
        "the data makes customers with several sessions and sessions of several rows"
    );

    let plan = plan_job(&spec).await.unwrap();
    let state = plan
        .shuffle_state_stages(&spec)
        .pop()
        .expect("a shuffle after the scan");
    assert!(matches!(state.kind, ShuffleStateKind::SessionRows));
    assert_eq!(
        plan.stages[state.stage_id as usize].kind,
        StageKind::Hash(4),
        "{}",
        plan.display()
    );
    let mut actual = BTreeSet::new();
    for batch in run_distributed(&spec, &slices).await {
        let column = |name: &str| batch.column_by_name(name).unwrap().clone();
        let (customers, starts, ends, counts) = (
            column("customer_id"),
            column("window_start"),
            column("window_end"),
            column("n"),
        );
        for row in 0..batch.num_rows() {
            actual.insert((
                customers.as_primitive::<Int64Type>().value(row),
                starts.as_primitive::<TimestampMillisecondType>().value(row),
                ends.as_primitive::<TimestampMillisecondType>().value(row),
                counts.as_primitive::<Int64Type>().value(row),
            ));
        }
    }
    assert_eq!(actual, expected);
}

#[tokio::test]
async fn window_partials_kept_after_the_shuffle_carry_every_aggregate_across_batches() {
    let sql = "SELECT window_start, window_end, country, count(*) AS n, sum(amount) AS revenue, \
               min(amount) AS lo, max(amount) AS hi, avg(amount) AS mean, \
               count(DISTINCT customer_id) AS customers \
               FROM source GROUP BY window_start, window_end, country";
    let mut spec = spec(sql, 4);
    spec.source_mut().watermark = Some(sluice_core::spec::WatermarkSpec {
        column: "ts".into(),
        delay: "10s".into(),
        late: Default::default(),
        idle_timeout: None,
        advance_when_idle: None,
    });
    spec.window = Some(sluice_core::spec::WindowSpec {
        size: "100ms".into(),
        slide: None,
    });
    let slices = source_slices(&spec);
    let expected = normalized_rows(&run_single_process(&spec, &slices).await);

    let plan = plan_job(&spec).await.unwrap();
    let state = plan
        .shuffle_state_stages(&spec)
        .pop()
        .expect("partials kept after the shuffle");
    assert!(
        matches!(state.kind, ShuffleStateKind::WindowPartials(_)),
        "{}",
        plan.display()
    );
    // Batch 1 reads the first slice; its state stage's tasks collect what their readers
    // yielded, merged into one partial row per group.
    let first = Arc::new(CarriedRows {
        stage_id: state.input_stage,
        ..Default::default()
    });
    run_distributed_with_state(&spec, &slices[..1], Some((state.stage_id, first.clone()))).await;
    let mut carried = HashMap::new();
    for (partition, rows) in first.take_yielded() {
        let merged = state
            .merge(rows.clone(), base_task_context(&spec))
            .await
            .unwrap();
        let merged_rows: usize = merged.iter().map(|b| b.num_rows()).sum();
        let yielded_rows: usize = rows.iter().map(|b| b.num_rows()).sum();
        assert!(merged_rows <= yielded_rows);
        assert!(merged.iter().all(|b| b.schema() == state.schema));
        carried.insert(partition, merged);
    }
    assert!(!carried.is_empty());
    // Batch 2 reads the other slices and starts from that state: the same rows as one
    // batch over everything.
    let second = Arc::new(CarriedRows {
        stage_id: state.input_stage,
        state: CarriedState::Rows(carried),
        ..Default::default()
    });
    let rows =
        run_distributed_with_state(&spec, &slices[1..], Some((state.stage_id, second))).await;
    assert_eq!(normalized_rows(&rows), expected);
}

#[tokio::test]
async fn windows_over_deduplicated_records_keep_state_in_two_stages_one_after_the_other() {
    let mut spec = dedup_spec(
        "SELECT window_start, window_end, country, count(*) AS n FROM source \
         GROUP BY window_start, window_end, country",
    );
    spec.window = Some(sluice_core::spec::WindowSpec {
        size: "1m".into(),
        slide: None,
    });
    let plan = plan_job(&spec).await.unwrap();
    let stages = plan.shuffle_state_stages(&spec);
    let kinds: Vec<&ShuffleStateKind> = stages.iter().map(|s| &s.kind).collect();
    assert!(
        matches!(
            kinds.as_slice(),
            [
                ShuffleStateKind::DedupRows { .. },
                ShuffleStateKind::WindowPartials(_)
            ]
        ),
        "{kinds:?}\n{}",
        plan.display()
    );
    assert_eq!(
        stages[1].input_stage, stages[0].stage_id,
        "the windows' partials join the deduplicating stage's output"
    );
    assert!(plan.stages[stages[0].input_stage as usize].kind == StageKind::Source);
}

#[tokio::test]
async fn only_the_deduplicating_views_ranking_is_replaced_by_hashing() {
    // The query ranks by the same key itself: its window function stays.
    let spec = dedup_spec(
        "SELECT customer_id, row_number() OVER (PARTITION BY customer_id ORDER BY ts) AS r \
         FROM source",
    );
    let display = plan_job(&spec).await.unwrap().display();
    assert_eq!(
        display.matches("FirstRowPerKeyExec").count(),
        1,
        "{display}"
    );
    assert!(display.contains("WindowAggExec"), "{display}");
}
