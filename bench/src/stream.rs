//! The stream suite: latency of a job fed while it runs, phase by phase.

use super::*;

/// Partitions of the 100 ms-trigger streams.
pub(crate) const STREAM_PARTITIONS: i32 = 4;

/// The per-batch phases of a progress record, the last one the whole batch.
pub(crate) const PHASES: [Phase; 5] = [
    ("plan", |b| b.plan_ms),
    ("execute", |b| b.execute_ms),
    ("commit (Iceberg)", |b| b.commit_ms),
    ("checkpoint (etcd)", |b| b.checkpoint_ms),
    ("total overhead", |b| b.duration_ms),
];

/// What one 100 ms-trigger stream measured: (median, p99) per phase and of latency.
pub(crate) struct StreamFigures {
    pub(crate) batches: usize,
    pub(crate) median_rows: f64,
    pub(crate) phases: Vec<(f64, f64)>,
    pub(crate) latency: (f64, f64),
}

/// Produces `stream_rate` events/s for `stream_secs` to `topic` while a filter job on a
/// 100 ms trigger commits them; steady-state figures (warm-up batches left out).
pub(crate) async fn stream(
    cluster: &TestCluster,
    args: &Args,
    topic: &str,
) -> Result<StreamFigures> {
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
