//! `sluice-bench`: Sluice against the raw broker, on one machine.
//!
//! Suites (`--suite`, all by default):
//! - `throughput`: loads a topic with 200-byte JSON events, measures how fast a plain
//!   librdkafka consumer reads them (the ceiling; also a stricter one, consumers taking
//!   messages in batches as Sluice's reader does), runs a filter/projection job and an
//!   aggregation job (shuffled between executors) to completion, the aggregation again
//!   over twice the events for the marginal rate, with the CPU's idle share during each
//!   job, where the tasks' time went (read, decode, state, execute, write), and the large
//!   run's batches one by one (do early batches run slower?);
//! - `windows`: a stateless `GROUP BY`, a tumbling and a sliding window aggregation, a
//!   deduplicated `GROUP BY` and long sessions over the same events with event times, as
//!   ratios to the stateless job, with the per-batch cost of the state;
//! - `nexmark`: the Nexmark suite's stateless queries q0 (pass-through), q1 (currency
//!   conversion) and q2 (selection) over its person/auction/bid stream, in events/s and
//!   events/s per core;
//! - `shuffle`: what the shuffle adds to a 10,000-row batch;
//! - `decode`: records decoded per second by one thread, by the flat JSON fast path and
//!   by arrow-json alone, for plain orders and orders whose strings carry escapes;
//! - `stream`: small batches on a 100 ms trigger, per-batch overhead and end-to-end
//!   latency (produce time -> committed snapshot), without and with Kafka read-ahead;
//! - `tables` (only when asked for): two jobs on one 100 ms-trigger stream, compaction off
//!   and on, for `--table-batches` batches each; live data files, manifests and what
//!   reading each table costs (pyiceberg plans, DuckDB scans; needs `pip install duckdb`).
//!
//! Real processes: etcd, the mock Kafka cluster, the driver and executor binaries.
//!
//! `cargo build --release --bins && cargo run --release -p sluice-integration-tests --bin sluice-bench`

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_datagen::synthetic::{bulk_producer, producer, Order};
use sluice_integration_tests::TestCluster;
use sluice_kafka::read::fetched::BatchPoller;
use sluice_kafka::read::KafkaConsumer;
use sluice_proto::v1::{BatchProgress, StopJobRequest, WatchJobRequest};

/// Benchmark Sluice against a plain Kafka consumer.
#[derive(Debug, Parser)]
struct Args {
    /// Events loaded for the throughput runs.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Partitions of the loaded topic (the mock broker keeps ~5 MiB each).
    #[arg(long, default_value_t = 16)]
    partitions: i32,
    #[arg(long, default_value_t = 2)]
    executors: usize,
    /// Seconds of the 100 ms-trigger stream.
    #[arg(long, default_value_t = 20)]
    stream_secs: u64,
    /// Events per second during the stream (10,000/s makes ~1,000-row batches).
    #[arg(long, default_value_t = 10_000)]
    stream_rate: u64,
    /// Offsets a task reads at most (default: the product's default).
    #[arg(long, default_value_t = sluice_core::spec::DEFAULT_MAX_RECORDS_PER_TASK)]
    max_task_records: u64,
    /// Small ranges share a task up to this many offsets (default: the product's).
    #[arg(long, default_value_t = sluice_core::spec::DEFAULT_MIN_RECORDS_PER_TASK)]
    min_task_records: u64,
    /// Tasks per executor task slot for a large batch (default: the product's).
    #[arg(long, default_value_t = sluice_core::spec::DEFAULT_TASKS_PER_SLOT)]
    tasks_per_slot: u32,
    /// A librdkafka property for every job's consumers, as NAME=VALUE (repeatable), e.g.
    /// `queued.max.messages.kbytes=4096` for how much each consumer fetches ahead.
    #[arg(long = "kafka-property", value_parser = kafka_property)]
    kafka_properties: Vec<(String, String)>,
    /// Batches each job of the `tables` suite commits on its 100 ms trigger.
    #[arg(long, default_value_t = 2_000)]
    table_batches: u64,
    /// Which suites to run.
    #[arg(long, value_enum, default_values_t = [Suite::Throughput, Suite::Windows, Suite::Nexmark, Suite::Shuffle, Suite::Stream, Suite::Decode])]
    suite: Vec<Suite>,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Suite {
    Throughput,
    Windows,
    Nexmark,
    Shuffle,
    Stream,
    /// One thread decoding chunks of orders, with and without the flat JSON fast path.
    Decode,
    /// Live files, manifests and read times of a table fed every 100 ms, compaction off
    /// and on (not run by default: it takes `table_batches` / 10 seconds).
    Tables,
}

/// Produce time (ms since the epoch) by (partition, offset).
type ProduceTimes = HashMap<(i32, i64), i64>;

/// A per-batch figure and how to read it off a progress record.
type Phase = (&'static str, fn(&BatchProgress) -> u64);

/// Batches of the 100 ms stream left out as warm-up (about its first second).
const WARM_UP_BATCHES: usize = 10;

/// Target size of one event's JSON.
const EVENT_BYTES: usize = 200;

/// Event `seq` as JSON padded to about [`EVENT_BYTES`].
fn event(seq: u64, ts_ms: i64) -> String {
    let json = Order::new(seq, ts_ms).to_json();
    let pad = EVENT_BYTES.saturating_sub(json.len() + 12);
    format!(
        "{},\"note\":\"{}\"}}",
        &json[..json.len() - 1],
        "n".repeat(pad)
    )
}

/// Loads events `first..first + count` of about [`EVENT_BYTES`] stamped now.
fn produce(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    first: u64,
    count: u64,
) -> Result<()> {
    produce_events(cluster, topic, partitions, first, count, |_| {
        sluice_core::now_ms()
    })
}

/// Loads events `first..first + count`, event `seq` with event time `event_time(seq)`.
fn produce_events(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    first: u64,
    count: u64,
    event_time: impl Fn(u64) -> i64,
) -> Result<()> {
    let producer = bulk_producer(&cluster.bootstrap_servers())?;
    let events = sluice_datagen::synthetic::EventRange {
        first,
        count,
        rate: None,
    };
    sluice_datagen::synthetic::produce_events(
        &producer,
        topic,
        partitions,
        events,
        |_| {},
        |seq, _| (None, event(seq, event_time(seq))),
    )?;
    Ok(())
}

/// Each of the `count` records' produce time by (partition, offset), read with a plain
/// consumer.
fn produce_times(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    count: u64,
) -> Result<ProduceTimes> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut timestamps = HashMap::new();
    let mut read = 0;
    while read < count {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                read += 1;
                let produced = m.timestamp().to_millis().unwrap_or(0);
                timestamps.insert((m.partition(), m.offset()), produced);
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => bail!("raw consumer stalled at {read} of {count} records"),
        }
    }
    Ok(timestamps)
}

/// Reads a table the way a reader does: pyiceberg plans the current snapshot's files,
/// DuckDB scans them (`count(*)`, then a filtered aggregate); best of three, in ms.
/// `None` when Python lacks pyiceberg or duckdb (DuckDB's own Iceberg extension is
/// downloaded at run time, so Parquet files planned by pyiceberg stand in for it).
fn reader_times(cluster: &TestCluster, table: &str) -> Option<(f64, f64, f64, u64)> {
    let dir = cluster.dir.path().display();
    let script = format!(
        r#"
import time
import duckdb
from pyiceberg.catalog.sql import SqlCatalog
catalog = SqlCatalog("{catalog}", uri="sqlite:///{dir}/catalog.db", warehouse="file://{dir}/warehouse")
con = duckdb.connect()
best = [1e9, 1e9, 1e9]
for _ in range(3):
    started = time.perf_counter()
    table = catalog.load_table("test.{table}")
    files = [t.file.file_path.removeprefix("file://") for t in table.scan().plan_files()]
    planned = time.perf_counter()
    rows = con.execute(f"SELECT count(*) FROM read_parquet({{files}})").fetchone()[0]
    counted = time.perf_counter()
    con.execute(f"SELECT count(*), sum(amount) FROM read_parquet({{files}}) WHERE product_id = 7").fetchone()
    filtered = time.perf_counter()
    best = [min(best[0], planned - started), min(best[1], counted - planned), min(best[2], filtered - counted)]
print(best[0] * 1000, best[1] * 1000, best[2] * 1000, rows)
"#,
        catalog = sluice_core::spec::DEFAULT_CATALOG_NAME,
    );
    let output = match std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
    {
        Ok(output) => output,
        Err(e) => {
            eprintln!("cannot run python3 to read {table}: {e}");
            return None;
        }
    };
    if !output.status.success() {
        eprintln!(
            "reading {table} with pyiceberg and DuckDB failed (pip install duckdb pyiceberg[sql-sqlite]): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        return None;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<&str> = stdout.split_whitespace().collect();
    if fields.len() != 4 {
        eprintln!("reading {table}: unexpected output {stdout:?}");
        return None;
    }
    Some((
        fields.first()?.parse().ok()?,
        fields.get(1)?.parse().ok()?,
        fields.get(2)?.parse().ok()?,
        fields.get(3)?.parse().ok()?,
    ))
}

/// Two jobs on one 100 ms-trigger stream, compaction off and on, until each committed
/// `table_batches` batches; then each table's live files and manifests and what reading it
/// costs.
async fn tables(cluster: &TestCluster, args: &Args) -> Result<()> {
    let topic = "table-stream";
    cluster.kafka.create_topic(topic, STREAM_PARTITIONS, 1)?;
    let sql = "SELECT order_id, product_id, amount, _partition AS p, _offset AS o FROM source";
    let jobs = [
        ("compaction off", "tables_off", false),
        ("compaction on", "tables_on", true),
    ];
    let mut ids = vec![];
    let mut specs = vec![];
    for (_, name, compaction) in jobs {
        let spec = spec(
            cluster,
            name,
            topic,
            sql,
            "{processing_time: 100ms}",
            "    starting_offsets: earliest",
        );
        let spec = match compaction {
            true => spec,
            false => TestCluster::without_compaction(&spec),
        };
        ids.push(
            cluster
                .submit(&spec)
                .await
                .map_err(|s| anyhow::anyhow!("{}", s.message()))?,
        );
        specs.push(spec);
    }
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let bootstrap = cluster.bootstrap_servers();
        let rate = args.stream_rate;
        let producing = producing.clone();
        std::thread::spawn(move || -> Result<()> {
            let producer = producer(&bootstrap)?;
            let mut first = 0;
            while producing.load(Ordering::Relaxed) {
                let events = sluice_datagen::synthetic::EventRange {
                    first,
                    count: rate,
                    rate: Some(rate as f64),
                };
                sluice_datagen::synthetic::produce_events(
                    &producer,
                    topic,
                    STREAM_PARTITIONS,
                    events,
                    |_| {},
                    |seq, now_ms| (None, event(seq, now_ms)),
                )?;
                first += rate;
            }
            Ok(())
        })
    };
    let started = Instant::now();
    let target = args.table_batches as i64;
    loop {
        let mut done = 0;
        for id in &ids {
            if cluster.status(id).await?.last_committed_batch + 1 >= target {
                done += 1;
            }
        }
        if done == ids.len() {
            break;
        }
        if started.elapsed() > Duration::from_secs(args.table_batches / 2 + 600) {
            bail!("the jobs did not reach {target} batches in time");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    producing.store(false, Ordering::Relaxed);
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    for id in &ids {
        cluster.stop_and_wait(id).await?;
    }
    println!(
        "## Tables after {} batches of a 100 ms trigger ({} events/s, {STREAM_PARTITIONS} partitions)\n",
        args.table_batches, args.stream_rate
    );
    println!("| table | batches | rows | live data files | manifests | data MiB | files compacted | pyiceberg plan ms | DuckDB count(*) ms | DuckDB filtered ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for ((label, name, _), (id, spec)) in jobs.iter().zip(ids.iter().zip(&specs)) {
        let status = cluster.status(id).await?;
        let table = cluster.sink_table(spec).await?;
        let live = sluice_iceberg::rewrite::live_files(&table).await?;
        let bytes: u64 = live.iter().map(|f| f.data_file.file_size_in_bytes()).sum();
        let rows: u64 = live.iter().map(|f| f.data_file.record_count()).sum();
        let manifests = match table.metadata().current_snapshot() {
            Some(current) => table
                .manifest_list_reader(current)
                .load()
                .await?
                .entries()
                .len(),
            None => 0,
        };
        let compacted = cluster
            .driver_metric(&format!(r#"sluice_compacted_files_total{{job="{name}"}}"#))
            .await
            .unwrap_or(0.0);
        let reads = reader_times(cluster, name);
        if let Some((_, _, _, read_rows)) = reads {
            if read_rows != rows {
                bail!("{label}: DuckDB counted {read_rows} rows, the table holds {rows}");
            }
        }
        let (plan, count, filtered) = reads
            .map(|(p, c, f, _)| (format!("{p:.0}"), format!("{c:.0}"), format!("{f:.0}")))
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        println!(
            "| {label} | {} | {rows} | {} | {manifests} | {:.1} | {compacted:.0} | {plan} | {count} | {filtered} |",
            status.last_committed_batch + 1,
            live.len(),
            bytes as f64 / 1048576.0,
        );
    }
    println!();
    Ok(())
}

/// How the raw consumers of the ceiling take their messages.
#[derive(Debug, Clone, Copy)]
enum RawPolls {
    /// One `poll` per message: the plain consumer API (the issue's ceiling).
    PerMessage,
    /// Up to [`RAW_POLL_BATCH`] messages per call from the consumer's queue, as Sluice's
    /// reader takes them: a stricter ceiling, with less work per message.
    Batched,
}

/// Most messages a batched raw poll takes.
const RAW_POLL_BATCH: usize = 1024;

/// Reads every record of `topic` with one consumer per core (tuned as Sluice's consumers
/// are), each on its share of the partitions, without decoding: the rate Kafka can
/// deliver on this machine. Returns the seconds until the last record arrived.
fn consume_parallel(
    cluster: &TestCluster,
    topic: &str,
    partitions: i32,
    polls: RawPolls,
) -> Result<f64> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as i32;
    let started = Instant::now();
    let readers: Vec<_> = (0..threads)
        .map(|thread| {
            let bootstrap = cluster.bootstrap_servers();
            let topic = topic.to_string();
            std::thread::spawn(move || -> Result<u64> {
                let consumer = sluice_kafka::read::consumer(&bootstrap)?;
                let mut assignment = TopicPartitionList::new();
                let mut remaining = 0;
                for p in (0..partitions).filter(|p| p % threads == thread) {
                    let (low, high) =
                        consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                    remaining += (high - low) as u64;
                    assignment.add_partition_offset(&topic, p, Offset::Offset(low))?;
                }
                let total = remaining;
                consumer.assign(&assignment)?;
                match polls {
                    RawPolls::PerMessage => consume_per_message(&consumer, remaining)?,
                    RawPolls::Batched => consume_batched(&consumer, remaining)?,
                }
                Ok(total)
            })
        })
        .collect();
    for reader in readers {
        reader
            .join()
            .map_err(|_| anyhow::anyhow!("raw consumer panicked"))??;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Polls `consumer` once per message until `remaining` messages arrived.
fn consume_per_message(consumer: &KafkaConsumer, mut remaining: u64) -> Result<()> {
    while remaining > 0 {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(_)) => remaining -= 1,
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => bail!("raw consumer stalled with {remaining} records to go"),
        }
    }
    Ok(())
}

/// Takes `consumer`'s messages in batches until `remaining` messages arrived.
fn consume_batched(consumer: &KafkaConsumer, mut remaining: u64) -> Result<()> {
    let mut poller = BatchPoller::new(consumer).context("the raw consumer has no queue")?;
    let mut messages = Vec::with_capacity(RAW_POLL_BATCH);
    while remaining > 0 {
        if poller.poll(Duration::from_secs(10), RAW_POLL_BATCH, &mut messages) == 0 {
            bail!("raw consumer stalled with {remaining} records to go");
        }
        for message in messages.drain(..) {
            if let Some(code) = message.error() {
                bail!("raw consumer: {code}");
            }
            remaining = remaining.saturating_sub(1);
        }
    }
    Ok(())
}

/// Streams a job's progress until it ends or `until` says stop; records receive times.
async fn watch(
    cluster: &TestCluster,
    job: &str,
    mut until: impl FnMut(&BatchProgress) -> bool,
) -> Result<Vec<(BatchProgress, i64)>> {
    let mut client = cluster.client().await?;
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: job.to_string(),
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(p) = stream.message().await? {
        if !p.job_state.is_empty() {
            if p.job_state != "FINISHED" && p.job_state != "STOPPED" {
                bail!("job {job} ended {}: {}", p.job_state, p.message);
            }
            break;
        }
        if p.batch_id < 0 {
            eprintln!("paused: {}", p.message);
            continue;
        }
        let stop = until(&p);
        seen.push((p, sluice_core::now_ms()));
        if stop {
            break;
        }
    }
    Ok(seen)
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * (values.len() - 1) as f64).round() as usize;
    values[rank]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    format!(
        "{} cores ({cpu}), {:.0} GiB RAM; broker (librdkafka mock cluster), etcd, driver and executors on the same machine",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem as f64 / 1024.0 / 1024.0
    )
}

fn median(values: &[f64]) -> f64 {
    percentile(&mut values.to_vec(), 50.0)
}

/// Runs `sql` over the `shuffle` topic in 10,000-row batches; per-batch durations and
/// execute times (ms), first batches (warm-up) left out.
async fn batch_times(cluster: &TestCluster, name: &str, sql: &str) -> Result<(Vec<f64>, Vec<f64>)> {
    let spec = spec(
        cluster,
        name,
        "shuffle",
        sql,
        "{available_now: true}",
        "    max_offsets_per_trigger: 10000",
    );
    let job = cluster
        .submit(&spec)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let batches = watch(cluster, &job, |_| false).await?;
    let steady: Vec<&BatchProgress> = batches.iter().map(|(b, _)| b).skip(2).collect();
    Ok((
        steady.iter().map(|b| b.duration_ms as f64).collect(),
        steady.iter().map(|b| b.execute_ms as f64).collect(),
    ))
}

/// What the shuffle adds to a 10,000-row batch: the same batches through a single-stage
/// job writing about as many rows, and through a GROUP BY (map stage, Arrow Flight
/// exchange, reduce stage).
async fn shuffle_overhead(cluster: &TestCluster, executors: usize) -> Result<()> {
    let partitions = 8;
    let batches = 20;
    cluster.kafka.create_topic("shuffle", partitions, 1)?;
    produce(cluster, "shuffle", partitions, 0, batches * 10_000)?;
    // Alternating rounds, so that a slow spell of the shared machine hits both jobs.
    let (mut single, mut single_exec, mut shuffled, mut shuffled_exec) =
        (vec![], vec![], vec![], vec![]);
    for round in 0..2 {
        let (total, exec) = batch_times(
            cluster,
            &format!("bench-single-stage-{round}"),
            "SELECT product_id, amount FROM source WHERE _offset % 200 = 0",
        )
        .await?;
        single.extend(total);
        single_exec.extend(exec);
        let (total, exec) = batch_times(
            cluster,
            &format!("bench-shuffled-{round}"),
            "SELECT product_id, count(*) AS orders, sum(amount) AS revenue FROM source GROUP BY product_id",
        )
        .await?;
        shuffled.extend(total);
        shuffled_exec.extend(exec);
    }
    println!(
        "## Shuffle overhead (10,000-row batches, {partitions} partitions, {executors} executors, {} steady batches each, two alternating rounds)\n",
        single.len()
    );
    println!("| job | batch median ms | execute median ms |\n| --- | ---: | ---: |");
    println!(
        "| single stage (filter, ~50 rows out) | {:.0} | {:.0} |",
        median(&single),
        median(&single_exec)
    );
    println!(
        "| two stages (GROUP BY product, ~50 rows out, Arrow Flight shuffle) | {:.0} | {:.0} |",
        median(&shuffled),
        median(&shuffled_exec)
    );
    println!(
        "| shuffle adds | {:.0} ({:.2}x) | {:.0} ({:.2}x) |\n",
        median(&shuffled) - median(&single),
        median(&shuffled) / median(&single),
        median(&shuffled_exec) - median(&single_exec),
        median(&shuffled_exec) / median(&single_exec)
    );
    Ok(())
}

/// The `parallelism:` line of the bench's jobs, set once from the arguments.
static PARALLELISM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The test cluster's spec for a job, with the bench's parallelism (the product's
/// defaults unless `--max-task-records` / `--min-task-records` say otherwise) instead of
/// the tests' small tasks.
fn spec(
    cluster: &TestCluster,
    name: &str,
    topic: &str,
    sql: &str,
    trigger: &str,
    extra: &str,
) -> String {
    // The stateless aggregations measured here are per batch.
    let spec = TestCluster::per_batch(&cluster.spec(name, topic, sql, trigger, extra));
    let test_parallelism = spec
        .lines()
        .find(|l| l.starts_with("parallelism:"))
        .expect("the test spec sets parallelism")
        .to_string();
    let spec = spec.replace(&test_parallelism, PARALLELISM.get().expect("set in main"));
    let properties = KAFKA_PROPERTIES.get().expect("set in main");
    if properties.is_empty() {
        return spec;
    }
    let listed: Vec<String> = properties
        .iter()
        .map(|(name, value)| format!("{name}: {value:?}"))
        .collect();
    spec.replacen(
        "\n    format: ",
        &format!("\n    properties: {{{}}}\n    format: ", listed.join(", ")),
        1,
    )
}

/// `--kafka-property`, for every job's spec.
static KAFKA_PROPERTIES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

/// `NAME=VALUE`, split.
fn kafka_property(text: &str) -> std::result::Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// Partitions of the 100 ms-trigger streams.
const STREAM_PARTITIONS: i32 = 4;

/// The per-batch phases of a progress record, the last one the whole batch.
const PHASES: [Phase; 5] = [
    ("plan", |b| b.plan_ms),
    ("execute", |b| b.execute_ms),
    ("commit (Iceberg)", |b| b.commit_ms),
    ("checkpoint (etcd)", |b| b.checkpoint_ms),
    ("total overhead", |b| b.duration_ms),
];

/// What one 100 ms-trigger stream measured: (median, p99) per phase and of latency.
struct StreamFigures {
    batches: usize,
    median_rows: f64,
    phases: Vec<(f64, f64)>,
    latency: (f64, f64),
}

/// Produces `stream_rate` events/s for `stream_secs` to `topic` while a filter job on a
/// 100 ms trigger commits them; steady-state figures (warm-up batches left out).
async fn stream(cluster: &TestCluster, args: &Args, topic: &str) -> Result<StreamFigures> {
    cluster.kafka.create_topic(topic, STREAM_PARTITIONS, 1)?;
    let stream_sql = "SELECT order_id, amount, _partition AS p, _offset AS o FROM source";
    let stream_spec = spec(
        cluster,
        &format!("bench-{topic}"),
        topic,
        stream_sql,
        "{processing_time: 100ms}",
        "    starting_offsets: earliest",
    );
    let job = cluster
        .submit(&stream_spec)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let total = args.stream_rate * args.stream_secs;
    let producer = {
        let bootstrap = cluster.bootstrap_servers();
        let rate = args.stream_rate;
        let topic = topic.to_string();
        std::thread::spawn(move || -> Result<()> {
            let events = sluice_datagen::synthetic::EventRange {
                first: 0,
                count: total,
                rate: Some(rate as f64),
            };
            sluice_datagen::synthetic::produce_events(
                &producer(&bootstrap)?,
                &topic,
                STREAM_PARTITIONS,
                events,
                |_| {},
                |seq, now_ms| (None, event(seq, now_ms)),
            )?;
            Ok(())
        })
    };
    let mut read = 0;
    let batches = watch(cluster, &job, |b| {
        read += b.input_rows;
        read >= total
    })
    .await?;
    producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer panicked"))??;
    cluster
        .client()
        .await?
        .stop_job(StopJobRequest {
            job_id: job.clone(),
        })
        .await?;
    let timestamps =
        produce_times(cluster, topic, STREAM_PARTITIONS, total).context("reading produce times")?;

    // Steady state: the first second of batches (the job starting: planning, executors
    // preparing it, connections) is left out of every figure, latency included.
    let mut latencies = Vec::with_capacity(total as usize);
    for (batch, committed_at) in batches.iter().skip(WARM_UP_BATCHES) {
        for p in &batch.partitions {
            for offset in p.start_offset..p.end_offset {
                if let Some(produced) = timestamps.get(&(p.partition, offset)) {
                    latencies.push((committed_at - produced) as f64);
                }
            }
        }
    }
    let steady: Vec<&BatchProgress> = batches
        .iter()
        .map(|(b, _)| b)
        .skip(WARM_UP_BATCHES)
        .collect();
    let column =
        |f: fn(&BatchProgress) -> u64| -> Vec<f64> { steady.iter().map(|b| f(b) as f64).collect() };
    let median_and_p99 =
        |mut values: Vec<f64>| (percentile(&mut values, 50.0), percentile(&mut values, 99.0));
    Ok(StreamFigures {
        batches: batches.len(),
        median_rows: percentile(&mut column(|b| b.input_rows), 50.0),
        phases: PHASES
            .iter()
            .map(|(_, f)| median_and_p99(column(*f)))
            .collect(),
        latency: median_and_p99(latencies),
    })
}

/// The machine's CPU time so far (`/proc/stat`): (idle, including I/O wait; total).
fn cpu_counters() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (idle, fields.iter().sum())
}

/// A job run to completion.
struct JobRun {
    batches: Vec<BatchProgress>,
    secs: f64,
    /// The share of CPU time the machine spent idle while the job ran.
    idle: f64,
    /// The same from the first batch's end to the last's: the batches' own idle, without
    /// the job's submission and first planning (`None` with fewer than two batches).
    batches_idle: Option<f64>,
}

impl JobRun {
    fn rows(&self) -> u64 {
        self.batches.iter().map(|b| b.input_rows).sum()
    }

    fn rate(&self) -> f64 {
        self.rows() as f64 / self.secs
    }

    /// Where the tasks' time went, as shares of their summed wall time: taking messages
    /// from Kafka (`read_ms` less `decode_ms`: a task reads and decodes on one thread),
    /// decoding them, state, execution, writing.
    fn task_split(&self) -> String {
        let mut sums = [0u64; 5];
        for times in self.batches.iter().filter_map(|b| b.task_times.as_ref()) {
            sums[0] += times.read_ms.saturating_sub(times.decode_ms);
            sums[1] += times.decode_ms.min(times.read_ms);
            sums[2] += times.state_ms;
            sums[3] += times.execute_ms;
            sums[4] += times.write_ms;
        }
        let total = sums.iter().sum::<u64>().max(1) as f64;
        let names = ["read", "decode", "state", "execute", "write"];
        names
            .iter()
            .zip(sums)
            .map(|(name, ms)| format!("{name} {:.0}%", ms as f64 * 100.0 / total))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Submits `spec` (an `available_now` job) and waits until it finished.
async fn run_spec_to_completion(cluster: &TestCluster, spec: &str) -> Result<JobRun> {
    run_spec(cluster, spec, None).await
}

/// Submits `spec` and waits until it finished or, with `rows`, until its batches read
/// that many records (then stops it: a `processing_time` job never finishes).
async fn run_spec(cluster: &TestCluster, spec: &str, rows: Option<u64>) -> Result<JobRun> {
    let cpu_before = cpu_counters();
    let started = Instant::now();
    let job = cluster
        .submit(spec)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    let mut at_batch_ends = Vec::new();
    let mut read = 0;
    let batches = watch(cluster, &job, |batch| {
        at_batch_ends.push(cpu_counters());
        read += batch.input_rows;
        rows.is_some_and(|rows| read >= rows)
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    if rows.is_some() {
        cluster.stop_and_wait(&job).await?;
    }
    let cpu_after = cpu_counters();
    let idle_between =
        |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
    let batches_idle = match at_batch_ends.as_slice() {
        [first, .., last] => Some(idle_between(*first, *last)),
        _ => None,
    };
    Ok(JobRun {
        batches: batches.into_iter().map(|(b, _)| b).collect(),
        secs,
        idle: idle_between(cpu_before, cpu_after),
        batches_idle,
    })
}

/// Runs `jobs` jobs to completion in two alternating rounds (`spec_of(job, round)`) and
/// keeps each job's faster run: the machine is noisy. Every run must read
/// `expected_rows` when given.
async fn best_of_two_rounds(
    cluster: &TestCluster,
    jobs: usize,
    expected_rows: Option<u64>,
    spec_of: impl Fn(usize, usize) -> String,
) -> Result<Vec<JobRun>> {
    let mut best: Vec<Option<JobRun>> = (0..jobs).map(|_| None).collect();
    for round in 0..2 {
        for (i, best) in best.iter_mut().enumerate() {
            let run = run_spec_to_completion(cluster, &spec_of(i, round)).await?;
            if let Some(expected) = expected_rows.filter(|&e| e != run.rows()) {
                bail!("job {i} read {} records, expected {expected}", run.rows());
            }
            if best.as_ref().is_none_or(|b| run.rate() > b.rate()) {
                *best = Some(run);
            }
        }
    }
    Ok(best
        .into_iter()
        .map(|b| b.expect("every job ran"))
        .collect())
}

/// Raw consumer, filter and aggregation jobs, the aggregation at two sizes.
async fn throughput(cluster: &TestCluster, args: &Args) -> Result<()> {
    let (small, large) = (args.events, args.events * 2);
    cluster
        .kafka
        .create_topic("load-large", args.partitions * 2, 1)?;
    let started = Instant::now();
    produce(cluster, "load", args.partitions, 0, small)?;
    produce(cluster, "load-large", args.partitions * 2, 0, large)?;
    eprintln!(
        "loaded {} events in {:.1}s",
        small + large,
        started.elapsed().as_secs_f64()
    );
    // The ceiling: the best of three runs of plain consumers, one per core (the shared
    // machine is noisy); then the stricter one, consumers taking messages in batches.
    let ceiling = |polls| -> Result<f64> {
        let mut best: f64 = 0.0;
        for _ in 0..3 {
            let secs = consume_parallel(cluster, "load", args.partitions, polls)?;
            best = best.max(small as f64 / secs);
        }
        Ok(best)
    };
    let raw_rate = ceiling(RawPolls::PerMessage)?;
    let batched_rate = ceiling(RawPolls::Batched)?;
    let batch = "    max_offsets_per_trigger: 400000";
    let filter_sql = "SELECT order_id, customer_id, amount, country, _partition AS p, _offset AS o FROM source WHERE amount >= 100";
    let aggregate_sql = "SELECT country, product_id, count(*) AS orders, sum(amount) AS revenue FROM source GROUP BY country, product_id";
    // The same best-of policy as the other suites: two alternating rounds, each job's
    // faster run kept (the ceiling is the best of three).
    let jobs = [
        ("bench-filter", "load", filter_sql, small),
        ("bench-aggregate", "load", aggregate_sql, small),
        ("bench-aggregate-large", "load-large", aggregate_sql, large),
    ];
    let runs = best_of_two_rounds(cluster, jobs.len(), None, |i, round| {
        let (name, topic, sql, _) = jobs[i];
        spec(
            cluster,
            &format!("{name}-{round}"),
            topic,
            sql,
            "{available_now: true}",
            batch,
        )
    })
    .await?;
    for ((name, _, _, expected), run) in jobs.iter().zip(&runs) {
        if run.rows() != *expected {
            bail!("{name} read {} records, expected {expected}", run.rows());
        }
    }
    let [filter, aggregate, aggregate_large] =
        <[JobRun; 3]>::try_from(runs).map_err(|_| anyhow::anyhow!("three jobs ran"))?;
    // The large aggregation again as a stream that starts behind: a 100 ms trigger over
    // the same backlog, until its last record.
    let catch_up_spec = spec(
        cluster,
        "bench-aggregate-catch-up",
        "load-large",
        aggregate_sql,
        "{processing_time: 100ms}",
        batch,
    );
    let catch_up = run_spec(cluster, &catch_up_spec, Some(large)).await?;
    let marginal = (large - small) as f64 / (aggregate_large.secs - aggregate.secs);

    println!(
        "## Throughput ({small} events of {EVENT_BYTES} bytes, {} partitions, {} executors; each job the faster of two alternating runs)\n",
        args.partitions, args.executors
    );
    println!("| run | rows/s | ratio to raw | CPU idle: whole run / after the first batch |\n| --- | ---: | ---: | ---: |");
    println!(
        "| raw librdkafka consumers, one per core, no decoding (ceiling, best of 3) | {raw_rate:.0} | 1.00 | |"
    );
    println!(
        "| the same, taking messages in batches as Sluice's reader does (stricter ceiling, best of 3) | {batched_rate:.0} | {:.2} | |",
        batched_rate / raw_rate
    );
    let row = |name: &str, run: &JobRun| {
        let batches_idle = run
            .batches_idle
            .map_or("-".to_string(), |idle| format!("{:.0}%", idle * 100.0));
        println!(
            "| {name}, to completion ({} batches, {:.1} s) | {:.0} | {:.2} | {:.0}% / {batches_idle} |",
            run.batches.len(),
            run.secs,
            run.rate(),
            run.rate() / raw_rate,
            run.idle * 100.0
        )
    };
    row("filter/projection job", &filter);
    row("aggregation job (GROUP BY, shuffled)", &aggregate);
    row(
        &format!("aggregation job over {large} events"),
        &aggregate_large,
    );
    row(
        &format!("the same on a 100 ms trigger, catching up with the {large} events (one run)"),
        &catch_up,
    );
    println!(
        "| **aggregation, marginal** ({small} → {large} events) | {marginal:.0} | **{:.2}** | |\n",
        marginal / raw_rate
    );
    println!(
        "Against the stricter ceiling, the marginal rate is {:.2} of it.\n",
        marginal / batched_rate
    );
    println!("Where the tasks' time went (summed over tasks):\n");
    println!("- filter: {}", filter.task_split());
    println!("- aggregation: {}", aggregate.task_split());
    println!("- aggregation, large: {}\n", aggregate_large.task_split());
    println!("Batches of the large aggregation, in order (rows/s over the batch's duration; plan, execute (wall), commit and checkpoint for the batch; the gap from the previous batch's checkpoint to this batch's planning, spent outside any phase, negative when this batch started while the previous one committed; read (decoding included) and decode summed over its tasks; ms):\n");
    println!("| batch | rows | rows/s | plan | execute | commit | checkpoint | gap | tasks' read | tasks' decode |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    // A batch's plan is stamped when its ranges are chosen, just before the offset-log
    // write that ends its plan phase: a gap reads that write's time short.
    let started_ms = |batch: &BatchProgress| batch.trigger_time_ms - batch.plan_ms as i64;
    let mut previous_end_ms: Option<i64> = None;
    for batch in &aggregate_large.batches {
        let times = batch.task_times.unwrap_or_default();
        let gap =
            previous_end_ms.map_or("-".to_string(), |end| (started_ms(batch) - end).to_string());
        previous_end_ms = Some(started_ms(batch) + batch.duration_ms as i64);
        println!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {gap} | {} | {} |",
            batch.batch_id,
            batch.input_rows,
            batch.input_rows as f64 * 1000.0 / batch.duration_ms.max(1) as f64,
            batch.plan_ms,
            batch.execute_ms,
            batch.commit_ms,
            batch.checkpoint_ms,
            times.read_ms,
            times.decode_ms
        );
    }
    println!();
    Ok(())
}

/// Event time of window benchmark event `seq`: one event per millisecond.
const WINDOW_EPOCH_MS: i64 = 1_700_000_000_000;

/// A stateless `GROUP BY`, tumbling and sliding windows, deduplication and sessions over
/// the same events.
async fn windows(cluster: &TestCluster, args: &Args) -> Result<()> {
    let topic = "events";
    cluster.kafka.create_topic(topic, args.partitions, 1)?;
    produce_events(cluster, topic, args.partitions, 0, args.events, |seq| {
        WINDOW_EPOCH_MS + seq as i64
    })?;
    let batch = "    max_offsets_per_trigger: 100000";
    let windowed = format!("    watermark: {{column: ts, delay: 10s}}\n{batch}");
    let deduplicated = format!("{windowed}\n    dedup: {{key: [order_id], within: 1m}}");
    let jobs = [
        (
            "stateless GROUP BY country",
            "SELECT country, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY country",
            batch.to_string(),
        ),
        (
            "tumbling 1 min, by country",
            "SELECT window_start, window_end, country, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY tumble(ts, INTERVAL '1 minute'), country",
            windowed.clone(),
        ),
        (
            "sliding 5 min every 1 min, by country",
            "SELECT window_start, window_end, country, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes'), country",
            windowed.clone(),
        ),
        (
            "dedup by order_id within 1 min, GROUP BY country",
            "SELECT country, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY country",
            deduplicated,
        ),
        (
            "sessions of 30 min gap, by customer (none closes)",
            "SELECT customer_id, window_start, window_end, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY session(ts, INTERVAL '30 minutes'), customer_id",
            windowed.clone(),
        ),
    ];
    let best = best_of_two_rounds(cluster, jobs.len(), None, |i, round| {
        let (_, sql, extra) = &jobs[i];
        spec(
            cluster,
            &format!("bench-window-{i}-{round}"),
            topic,
            sql,
            "{available_now: true}",
            extra,
        )
    })
    .await?;
    println!(
        "## Windows ({} events, one per ms of event time, {} partitions, batches of 100,000 offsets)\n",
        args.events, args.partitions
    );
    println!("| job | rows/s | ratio to stateless | state rows (max) | state MiB (max) | state ms per batch (median, p99) | state KiB written per batch (median, p99) | state read from storage | CPU idle |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base = best[0].rate();
    for ((name, _, _), run) in jobs.iter().zip(&best) {
        let mut state_ms: Vec<f64> = run
            .batches
            .iter()
            .map(|b| b.task_times.as_ref().map_or(0, |t| t.state_ms) as f64)
            .collect();
        let mut written_kib: Vec<f64> = run
            .batches
            .iter()
            .map(|b| b.state_bytes_written as f64 / 1024.0)
            .collect();
        let read: u64 = run.batches.iter().map(|b| b.state_bytes_read).sum();
        let kept: u64 = run.batches.iter().map(|b| b.state_bytes).sum();
        println!(
            "| {name} | {:.0} | {:.2} | {} | {:.1} | {:.0}, {:.0} | {:.0}, {:.0} | {:.0}% | {:.0}% |",
            run.rate(),
            run.rate() / base,
            run.batches.iter().map(|b| b.state_rows).max().unwrap_or(0),
            run.batches.iter().map(|b| b.state_bytes).max().unwrap_or(0) as f64 / 1048576.0,
            percentile(&mut state_ms, 50.0),
            percentile(&mut state_ms, 99.0),
            percentile(&mut written_kib, 50.0),
            percentile(&mut written_kib, 99.0),
            if kept == 0 { 0.0 } else { read as f64 * 100.0 / kept as f64 },
            run.idle * 100.0
        );
    }
    println!();
    for ((name, _, _), run) in jobs.iter().zip(&best) {
        println!("- {name}: {}", run.task_split());
    }
    println!();
    Ok(())
}

/// The records/s per core the Flink Nexmark suite reports for q0, q1 and q2.
const FLINK_PER_CORE: [u64; 3] = [155_000, 158_000, 175_000];

/// Nexmark q0, q1 and q2 over the suite's event stream, each to completion.
async fn nexmark(cluster: &TestCluster, args: &Args) -> Result<()> {
    use sluice_datagen::nexmark::{event_json, Q0, Q1, Q2, SCHEMA_YAML};
    let topic = "nexmark";
    cluster.kafka.create_topic(topic, args.partitions, 1)?;
    let producer = bulk_producer(&cluster.bootstrap_servers())?;
    let events = sluice_datagen::synthetic::EventRange {
        first: 0,
        count: args.events,
        rate: None,
    };
    sluice_datagen::synthetic::produce_events(
        &producer,
        topic,
        args.partitions,
        events,
        |_| {},
        |seq, now_ms| (None, event_json(seq, now_ms)),
    )?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
    let source = "    max_offsets_per_trigger: 400000";
    println!(
        "## Nexmark ({} events: persons, auctions, bids 1:3:46; {} partitions, {} executors, {cores} cores for everything)\n",
        args.events, args.partitions, args.executors
    );
    println!(
        "| query | events/s | events/s per core | Flink's reported per core | ratio | CPU idle |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let queries = [("q0", Q0), ("q1", Q1), ("q2", Q2)];
    let best = best_of_two_rounds(cluster, queries.len(), Some(args.events), |i, round| {
        let (name, sql) = queries[i];
        spec(
            cluster,
            &format!("bench-nexmark-{name}-{round}"),
            topic,
            sql,
            "{available_now: true}",
            source,
        )
        .replace(sluice_datagen::synthetic::ORDER_SCHEMA_YAML, SCHEMA_YAML)
    })
    .await?;
    for (i, ((name, _), run)) in queries.iter().zip(best).enumerate() {
        let per_core = run.rate() / cores;
        println!(
            "| {name} | {:.0} | {per_core:.0} | {} | {:.2} | {:.0}% |",
            run.rate(),
            FLINK_PER_CORE[i],
            per_core / FLINK_PER_CORE[i] as f64,
            run.idle * 100.0
        );
    }
    println!();
    Ok(())
}

/// Streams of small batches on a 100 ms trigger: executors without Kafka read-ahead (every
/// read seeks: the baseline), then with it (the default).
async fn small_batches(cluster: &mut TestCluster, args: &Args) -> Result<()> {
    let mut runs = Vec::new();
    for (name, read_ahead) in [("without read-ahead", "false"), ("with read-ahead", "true")] {
        for i in 0..args.executors {
            cluster.restart_executor_with(i, &[("SLUICE_KAFKA_READ_AHEAD", read_ahead)])?;
        }
        let topic = format!("stream-{read_ahead}");
        runs.push((name, stream(cluster, args, &topic).await?));
    }
    println!(
        "## 100 ms trigger ({} events/s for {} s, {} partitions, first {WARM_UP_BATCHES} batches left out)\n",
        args.stream_rate, args.stream_secs, STREAM_PARTITIONS
    );
    println!(
        "| per batch, ms | {} |\n| --- |{}",
        runs.iter()
            .map(|(name, _)| format!("{name} median | p99"))
            .collect::<Vec<_>>()
            .join(" | "),
        " ---: | ---: |".repeat(runs.len())
    );
    let rows = |f: &dyn Fn(&StreamFigures) -> String| {
        runs.iter()
            .map(|(_, r)| f(r))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!(
        "| batches (median rows) | {} |",
        rows(&|r| format!("{} | ({:.0})", r.batches, r.median_rows))
    );
    for (i, (name, _)) in PHASES.iter().enumerate() {
        println!(
            "| {name} | {} |",
            rows(&|r| format!("{:.0} | {:.0}", r.phases[i].0, r.phases[i].1))
        );
    }
    println!(
        "| end-to-end latency, produce -> committed | {} |",
        rows(&|r| format!("{:.0} | {:.0}", r.latency.0, r.latency.1))
    );
    let (base, ahead) = (&runs[0].1, &runs[1].1);
    let total = PHASES.len() - 1;
    println!(
        "\nRead-ahead: execute median {:.2}x, total overhead median {:.2}x, p99 latency {:.2}x of the baseline.",
        ahead.phases[1].0 / base.phases[1].0.max(1.0),
        ahead.phases[total].0 / base.phases[total].0.max(1.0),
        ahead.latency.1 / base.latency.1.max(1.0)
    );
    Ok(())
}

/// Chunks of 8,192 orders decoded by one thread, by the flat JSON fast path and by
/// arrow-json alone (the best of three alternating rounds each): plain, with escapes in
/// their strings, and as the throughput suite's events (padded with a field no column
/// takes), all columns and only the aggregation job's.
fn decode(cluster: &TestCluster) -> Result<()> {
    use sluice_kafka::decode::{RawRecord, RecordDecoder};

    const CHUNK: u64 = 8_192;
    const CHUNKS: usize = 60;
    let spec = sluice_core::spec::JobSpec::parse(&cluster.spec(
        "decode",
        "load",
        "SELECT * FROM source",
        "{once: true}",
        "",
    ))?;
    let all_columns = RecordDecoder::for_job(&spec)?;
    let aggregated: std::collections::BTreeSet<String> =
        ["country", "product_id", "amount"].map(String::from).into();
    let aggregated_columns = all_columns.clone().keeping(&aggregated);
    let chunk = |events: Events| -> Vec<RawRecord> {
        (0..CHUNK)
            .map(|seq| {
                let json = Order::new(seq, 1_700_000_000_000).to_json();
                let json = match events {
                    Events::Plain => json,
                    Events::Escaped => json.replacen("\"o-", "\"o\\u00e9\\\"\\n-", 1),
                    Events::Padded => event(seq, 1_700_000_000_000),
                };
                RawRecord {
                    offset: seq as i64,
                    timestamp_ms: Some(0),
                    key: None,
                    value: Some(json.into_bytes()),
                }
            })
            .collect()
    };
    let rate = |decoder: &RecordDecoder, records: &[RawRecord]| -> Result<f64> {
        let start = Instant::now();
        for _ in 0..CHUNKS {
            let decoded = decoder.decode("load", 0, records)?;
            assert_eq!(decoded.batch.num_rows(), records.len());
        }
        Ok((CHUNKS * records.len()) as f64 / start.elapsed().as_secs_f64())
    };
    println!("## Decoding JSON (one thread, chunks of {CHUNK} orders: about 110 bytes plain, {EVENT_BYTES} as the throughput suite loads them)\n");
    println!("| records | arrow-json alone, records/s | fast path, records/s | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, events, fast) in [
        ("plain orders", Events::Plain, &all_columns),
        (
            "orders with escapes in a string",
            Events::Escaped,
            &all_columns,
        ),
        (
            "the throughput suite's events",
            Events::Padded,
            &all_columns,
        ),
        (
            "the throughput suite's events, the aggregation's columns",
            Events::Padded,
            &aggregated_columns,
        ),
    ] {
        let arrow_json = fast.clone().without_fast_path();
        let records = chunk(events);
        if fast.decode("load", 0, &records)?.batch != arrow_json.decode("load", 0, &records)?.batch
        {
            bail!("the fast path decoded {name} differently from arrow-json");
        }
        let (mut slow_best, mut fast_best) = (0f64, 0f64);
        for _ in 0..3 {
            slow_best = slow_best.max(rate(&arrow_json, &records)?);
            fast_best = fast_best.max(rate(fast, &records)?);
        }
        println!(
            "| {name} | {slow_best:.0} | {fast_best:.0} | {:.2} |",
            fast_best / slow_best
        );
    }
    println!();
    Ok(())
}

/// The orders the decode suite decodes.
#[derive(Clone, Copy)]
enum Events {
    Plain,
    /// With escapes in a string.
    Escaped,
    /// As the throughput suite loads them ([`event`]).
    Padded,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let parallelism = format!(
        "parallelism: {{max_records_per_task: {}, min_records_per_task: {}, tasks_per_slot: {}}}",
        args.max_task_records, args.min_task_records, args.tasks_per_slot
    );
    PARALLELISM.set(parallelism.clone()).expect("set once");
    KAFKA_PROPERTIES
        .set(args.kafka_properties.clone())
        .expect("set once");
    println!(
        "# Sluice benchmark\n\nMachine: {}\n\nJobs run with `{parallelism}`.\n",
        machine()
    );
    let mut cluster = TestCluster::start("load", args.partitions, args.executors).await?;
    for suite in &args.suite {
        match suite {
            Suite::Throughput => throughput(&cluster, &args).await?,
            Suite::Windows => windows(&cluster, &args).await?,
            Suite::Nexmark => nexmark(&cluster, &args).await?,
            Suite::Shuffle => shuffle_overhead(&cluster, args.executors).await?,
            Suite::Stream => small_batches(&mut cluster, &args).await?,
            Suite::Tables => tables(&cluster, &args).await?,
            Suite::Decode => decode(&cluster)?,
        }
    }
    Ok(())
}
