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
mod consumer;
mod stream;
mod suites;
mod tables;

use consumer::*;
use stream::*;
use suites::*;
use tables::*;

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
