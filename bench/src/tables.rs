//! The tables suite: two jobs on one 100 ms trigger, compaction off and on, then what reading each table costs.

use super::*;

/// Reads a table the way a reader does: pyiceberg plans the current snapshot's files,
/// DuckDB scans them (`count(*)`, then a filtered aggregate); best of three, in ms.
/// `None` when Python lacks pyiceberg or duckdb (DuckDB's own Iceberg extension is
/// downloaded at run time, so Parquet files planned by pyiceberg stand in for it).
pub(crate) fn reader_times(cluster: &TestCluster, table: &str) -> Option<(f64, f64, f64, u64)> {
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
pub(crate) async fn tables(cluster: &TestCluster, args: &Args) -> Result<()> {
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
