//! The throughput, windows, Nexmark, small-batches and decode suites.

use super::*;

/// Raw consumer, filter and aggregation jobs, the aggregation at two sizes.
pub(crate) async fn throughput(cluster: &TestCluster, args: &Args) -> Result<()> {
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
pub(crate) const WINDOW_EPOCH_MS: i64 = 1_700_000_000_000;

/// A stateless `GROUP BY`, tumbling and sliding windows, deduplication and sessions over
/// the same events.
pub(crate) async fn windows(cluster: &TestCluster, args: &Args) -> Result<()> {
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
pub(crate) const FLINK_PER_CORE: [u64; 3] = [155_000, 158_000, 175_000];

/// Nexmark q0, q1 and q2 over the suite's event stream, each to completion.
pub(crate) async fn nexmark(cluster: &TestCluster, args: &Args) -> Result<()> {
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
pub(crate) async fn small_batches(cluster: &mut TestCluster, args: &Args) -> Result<()> {
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
pub(crate) fn decode(cluster: &TestCluster) -> Result<()> {
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
