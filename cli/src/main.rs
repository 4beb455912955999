//! `sluice`: submit and watch jobs on a Sluice driver, or run a whole cluster locally.

mod client;
mod cluster;
mod demo;
mod format;
mod produce;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sluice_proto::auth::BearerToken;
use sluice_proto::tls::Tls;

use cluster::{ClusterOptions, LocalCluster};

/// Sluice: exactly-once micro-batch SQL from Kafka to Apache Iceberg.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Driver gRPC address(es), comma-separated; the first that answers is used.
    #[arg(
        long,
        global = true,
        env = "SLUICE_DRIVER",
        default_value = "http://127.0.0.1:50051"
    )]
    driver: String,
    /// File whose first line is the bearer token the driver requires (its
    /// --auth-token-file); not needed for a driver without authentication.
    #[arg(long, global = true, env = "SLUICE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// PEM CA certificate that signs the driver's TLS certificate: the driver is then
    /// reached over TLS (`https://`) and verified; addresses without a scheme use TLS.
    #[arg(long, global = true, env = "SLUICE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// PEM client certificate, for a driver that requires mutual TLS; needs --client-key.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        global = true,
        env = "SLUICE_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit a job spec (YAML or JSON); it is validated against Kafka and the catalog.
    Submit {
        /// The job spec file.
        file: PathBuf,
    },
    /// List the driver's jobs.
    List,
    /// Show a job's state and recent batches.
    Status { job: String },
    /// Stream a job's batch progress until it ends (Ctrl-C to stop watching).
    Watch { job: String },
    /// Show a job's table: files and bytes in the current snapshot, partitioning, latest
    /// snapshots and the batches they hold.
    Table { job: String },
    /// Stop a job: its running batch commits, then it stops.
    Stop { job: String },
    /// Produce synthetic JSON events to a topic: orders (the examples' schema), or with
    /// --nexmark the Nexmark benchmark's persons, auctions and bids.
    Produce {
        #[arg(long, env = "SLUICE_KAFKA", default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        #[arg(long, default_value = "orders")]
        topic: String,
        /// Number of events.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Events per second (as fast as possible when absent).
        #[arg(long)]
        rate: Option<f64>,
        /// Sequence number of the first event (order ids are o-<seq>).
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Nexmark events (1 person, 3 auctions, 46 bids in 50) instead of orders; their
        /// schema is in examples/nexmark-q1.yaml.
        #[arg(long)]
        nexmark: bool,
    },
    /// Run a driver and N executors as local processes until interrupted.
    Local {
        #[arg(long, default_value_t = 2)]
        executors: u32,
        /// A Kafka broker; without it a mock Kafka cluster runs inside this process.
        #[arg(long, env = "SLUICE_KAFKA")]
        kafka: Option<String>,
        /// etcd endpoints; without them checkpoints go to a file in --data-dir.
        #[arg(long, env = "SLUICE_ETCD")]
        etcd: Option<String>,
        #[arg(long, default_value = "sluice-data")]
        data_dir: PathBuf,
        /// Driver port (0 picks a free one).
        #[arg(long, default_value_t = 50051)]
        port: u16,
        /// Topics to create in the mock Kafka cluster, as NAME:PARTITIONS.
        #[arg(long = "topic", default_value = "orders:4")]
        topics: Vec<String>,
    },
    /// Run the demo: a local cluster, a stream of orders, a sample job, ten batches.
    Demo {
        #[arg(long, default_value = "sluice-demo")]
        data_dir: PathBuf,
        #[arg(long, default_value_t = 2)]
        executors: u32,
        /// Batches to watch before stopping.
        #[arg(long, default_value_t = 10)]
        batches: u64,
    },
}

fn parse_topic(text: &str) -> Result<(String, i32)> {
    match text.split_once(':') {
        Some((name, partitions)) => Ok((
            name.to_string(),
            partitions
                .parse()
                .with_context(|| format!("--topic {text}: partitions must be a number"))?,
        )),
        None => Ok((text.to_string(), 4)),
    }
}

async fn local(options: ClusterOptions) -> Result<()> {
    let mut cluster = LocalCluster::start(&options).await?;
    println!("Sluice is running.");
    println!("  driver:  {}", cluster.driver_url);
    println!("  kafka:   {}", cluster.bootstrap_servers);
    println!(
        "  status:  {} (Prometheus metrics at /metrics)",
        cluster.status_url
    );
    println!("  data:    {}", cluster.data_dir.display());
    println!("  logs:    {}/logs", cluster.data_dir.display());
    println!("  access:  loopback only, without TLS or tokens (a local cluster)");
    println!(
        "Submit with `sluice --driver {} submit job.yaml`; Ctrl-C stops.",
        cluster.driver_url
    );
    let shutdown = sluice_core::telemetry::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if let Some((name, status)) = cluster.exited() {
                    eprintln!("{name} exited ({status}); stopping");
                    break;
                }
            }
        }
    }
    println!("stopping (running batches commit first)");
    cluster.shutdown(Duration::from_secs(30)).await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    sluice_core::telemetry::init(false);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let token = BearerToken::from_file(cli.token_file.as_deref()).map_err(anyhow::Error::msg)?;
    let tls = Tls::from_files(
        cli.client_cert.as_deref(),
        cli.client_key.as_deref(),
        cli.ca_cert.as_deref(),
        false,
    )?;
    let access = client::DriverAccess {
        drivers: cli.driver.clone(),
        token,
        tls,
    };
    match cli.command {
        Command::Submit { file } => {
            let spec = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let mut driver = access.connect().await?;
            let (job, location) = client::submit(&mut driver, spec).await?;
            println!("submitted job {job}\ntable location: {location}");
        }
        Command::List => {
            let mut driver = access.connect().await?;
            let jobs = client::list(&mut driver).await?;
            if jobs.is_empty() {
                println!("no jobs");
            }
            for job in jobs {
                println!(
                    "{:<30} {:<9} batch {:>6}  rows {:>12}  {}",
                    job.job_id,
                    job.state,
                    job.last_committed_batch,
                    format::thousands(job.total_rows),
                    job.message
                );
            }
        }
        Command::Table { job } => {
            let mut driver = access.connect().await?;
            print!(
                "{}",
                format::table_block(&client::describe_table(&mut driver, &job).await?)
            );
        }
        Command::Status { job } => {
            let mut driver = access.connect().await?;
            print!(
                "{}",
                format::status_block(&client::status(&mut driver, &job).await?)
            );
        }
        Command::Watch { job } => {
            let mut driver = access.connect().await?;
            let end = client::watch(&mut driver, &job, |p| {
                println!("{}", format::batch_line(p));
                true
            })
            .await?;
            if let Some(end) = end {
                println!("job {job} is {} {}", end.job_state, end.message);
                if end.job_state == "FAILED" {
                    std::process::exit(1);
                }
            }
        }
        Command::Stop { job } => {
            let mut driver = access.connect().await?;
            client::stop(&mut driver, &job).await?;
            println!("job {job} stopped");
        }
        Command::Produce {
            bootstrap_servers,
            topic,
            count,
            rate,
            start,
            nexmark,
        } => {
            let events = if nexmark {
                produce::Events::Nexmark
            } else {
                produce::Events::Orders
            };
            let range = sluice_datagen::synthetic::EventRange {
                first: start,
                count,
                rate,
            };
            tokio::task::spawn_blocking(move || {
                produce::produce(&bootstrap_servers, &topic, events, range, false)
            })
            .await??;
        }
        Command::Local {
            executors,
            kafka,
            etcd,
            data_dir,
            port,
            topics,
        } => {
            if executors == 0 {
                bail!("--executors must be at least 1");
            }
            let topics = topics
                .iter()
                .map(|t| parse_topic(t))
                .collect::<Result<Vec<_>>>()?;
            local(ClusterOptions {
                executors,
                kafka,
                etcd,
                data_dir,
                topics,
                driver_port: port,
            })
            .await?;
        }
        Command::Demo {
            data_dir,
            executors,
            batches,
        } => demo::demo(data_dir, executors.max(1), batches.max(1)).await?,
    }
    Ok(())
}
