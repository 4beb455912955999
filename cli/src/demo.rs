//! `sluice demo`: a local cluster, a live stream of orders, a sample job, ten batches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sluice_datagen::synthetic::{produce_orders, producer, ORDER_SCHEMA_YAML};
use sluice_proto::v1::JobStatus;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::{client, format};

/// The demo's topic and its partitions.
const TOPIC: &str = "orders";
const PARTITIONS: i32 = 4;
/// Events produced per second while the demo runs.
const RATE: f64 = 5_000.0;

/// The sample job: revenue per product in each micro-batch (orders outside Japan), an
/// aggregation whose partial results are shuffled between the executors.
pub fn sample_spec(bootstrap_servers: &str, data_dir: &Path, trigger: &str) -> String {
    let dir = data_dir.display();
    format!(
        r#"name: revenue-by-product
source:
  kafka:
    bootstrap_servers: "{bootstrap_servers}"
    topics: [{TOPIC}]
    starting_offsets: earliest
    max_offsets_per_trigger: 100000
    format: json
    schema: {ORDER_SCHEMA_YAML}
    on_malformed: skip
trigger: {trigger}
sql: |
  SELECT product_id, count(*) AS orders, sum(amount) AS revenue,
         min(ts) AS first_order_at, max(ts) AS last_order_at
  FROM source
  WHERE country <> 'JP'
  GROUP BY product_id
aggregation: per_batch   # one row per product per batch
sink:
  iceberg:
    catalog: {{type: sql, uri: "sqlite://{dir}/catalog.db", warehouse: "file://{dir}/warehouse"}}
    namespace: shop
    table: revenue_by_product
parallelism: {{shuffle_partitions: 4}}
"#
    )
}

/// Removes what an earlier demo left in `dir` (only the demo's own files).
fn clean(dir: &Path) -> Result<()> {
    for name in ["catalog.db", "checkpoints.json", "warehouse", "logs"] {
        let path = dir.join(name);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

pub async fn demo(data_dir: PathBuf, executors: u32, batches: u64) -> Result<()> {
    std::fs::create_dir_all(&data_dir)?;
    clean(&data_dir).with_context(|| format!("cleaning {}", data_dir.display()))?;
    println!(
        "starting a driver and {executors} executors (logs in {}/logs)",
        data_dir.display()
    );
    let options = ClusterOptions {
        executors,
        kafka: None,
        etcd: None,
        data_dir: data_dir.clone(),
        topics: vec![(TOPIC.to_string(), PARTITIONS)],
        driver_port: 0,
    };
    let cluster = LocalCluster::start(&options).await?;
    let result = run_demo(&cluster, batches).await;
    println!("stopping the cluster");
    let data_dir = cluster.data_dir.clone();
    cluster.shutdown(Duration::from_secs(15)).await;
    let (location, status) = result?;
    report(&location, &status, &data_dir);
    Ok(())
}

async fn run_demo(cluster: &LocalCluster, batches: u64) -> Result<(String, JobStatus)> {
    println!(
        "mock Kafka at {}; producing {RATE} orders/s to {TOPIC} ({PARTITIONS} partitions)",
        cluster.bootstrap_servers
    );
    let stop_producing = Arc::new(AtomicBool::new(false));
    let producer_thread = {
        let bootstrap = cluster.bootstrap_servers.clone();
        let stop = stop_producing.clone();
        std::thread::spawn(move || -> Result<()> {
            let producer = producer(&bootstrap)?;
            let mut first = 0;
            // One second of events at a time, until told to stop.
            while !stop.load(Ordering::Relaxed) {
                produce_orders(
                    &producer,
                    TOPIC,
                    PARTITIONS,
                    first,
                    RATE as u64,
                    Some(RATE),
                    |_| {},
                )?;
                first += RATE as u64;
            }
            Ok(())
        })
    };
    let spec_text = sample_spec(
        &cluster.bootstrap_servers,
        &cluster.data_dir,
        "{processing_time: 1s}",
    );
    let mut driver = client::DriverAccess::local(&cluster.driver_url)
        .connect()
        .await?;
    let (job_id, location) = client::submit(&mut driver, spec_text.clone()).await?;
    println!("submitted job {job_id}; table at {location}");
    let mut seen = 0;
    let ended = client::watch(&mut driver, &job_id, |p| {
        println!("{}", format::batch_line(p));
        seen += 1;
        seen < batches
    })
    .await?;
    if let Some(end) = ended {
        bail!(
            "job {job_id} ended early: {} {}",
            end.job_state,
            end.message
        );
    }
    println!("stopping job {job_id} (the running batch commits first)");
    client::stop(&mut driver, &job_id).await?;
    stop_producing.store(true, Ordering::Relaxed);
    producer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let status = client::status(&mut driver, &job_id).await?;
    print!("{}", format::status_block(&status));
    Ok((location, status))
}

/// Where the demo's table is and what it holds, as the driver committed it.
fn report(location: &str, status: &JobStatus, data_dir: &Path) {
    println!();
    println!("Iceberg table {}", status.table);
    println!("  location: {location}");
    println!(
        "  catalog:  {}/catalog.db (SQLite, catalog name \"default\")",
        data_dir.display()
    );
    println!("  batches committed: {}", status.last_committed_batch + 1);
    println!("  rows: {}", format::thousands(status.total_rows));
}
