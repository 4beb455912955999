use std::net::SocketAddr;

use clap::Parser;
use sluice_executor::{
    ExecutorConfig, DEFAULT_SHUFFLE_MEMORY_BYTES, DEFAULT_STATE_CACHE_BYTES, DEFAULT_TASK_SLOTS,
};

/// Sluice executor: runs micro-batch tasks for a Sluice driver.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The driver's gRPC URL; several (comma-separated) when drivers fail over.
    #[arg(
        long,
        env = "SLUICE_DRIVER_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    driver: String,
    /// Address to listen on for tasks (port 0 picks a free port).
    #[arg(long, env = "SLUICE_EXECUTOR_BIND", default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Address to serve shuffle outputs on over Arrow Flight (port 0 picks a free port).
    #[arg(
        long,
        env = "SLUICE_EXECUTOR_FLIGHT_BIND",
        default_value = "127.0.0.1:0"
    )]
    flight_bind: SocketAddr,
    /// Bytes of shuffle (map) outputs kept in memory; the rest spills to --spill-dir.
    #[arg(long, env = "SLUICE_SHUFFLE_MEMORY_BYTES", default_value_t = DEFAULT_SHUFFLE_MEMORY_BYTES)]
    shuffle_memory_bytes: usize,
    /// Directory shuffle outputs spill to (default: sluice-shuffle under the temp dir).
    #[arg(long, env = "SLUICE_SPILL_DIR")]
    spill_dir: Option<std::path::PathBuf>,
    /// HTTP address for /healthz, /readyz and /metrics (port 0 picks a free port).
    #[arg(long, env = "SLUICE_EXECUTOR_HTTP_BIND", default_value = "127.0.0.1:0")]
    http_bind: SocketAddr,
    /// Host name the driver uses to reach this executor (default: the bind IP).
    #[arg(long, env = "SLUICE_EXECUTOR_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Tasks run at the same time.
    #[arg(long, env = "SLUICE_EXECUTOR_SLOTS", default_value_t = DEFAULT_TASK_SLOTS)]
    slots: u32,
    /// Stable executor id (default: a fresh one per process).
    #[arg(long, env = "SLUICE_EXECUTOR_ID")]
    id: Option<String>,
    /// Keep idle Kafka consumers on their partition, fetching ahead (up to 16 MiB per
    /// partition), so the partition's next range is already in memory. `false` saves
    /// that memory and the broker's fetches when an executor reads very many partitions.
    #[arg(long, env = "SLUICE_KAFKA_READ_AHEAD", default_value_t = true, action = clap::ArgAction::Set)]
    kafka_read_ahead: bool,
    /// Bytes of decoded state files (windows, sessions, deduplication) kept in memory, so
    /// the next batch of the same shuffle partitions reads its state from memory instead
    /// of storage. 0 reads state from storage every batch.
    #[arg(long, env = "SLUICE_STATE_CACHE_BYTES", default_value_t = DEFAULT_STATE_CACHE_BYTES)]
    state_cache_bytes: u64,
    /// Log as JSON lines.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    /// The cluster's token file (the driver's own --auth-token-file works): its first
    /// token is presented to the driver and to other executors, and the executor's task
    /// API and Flight server then accept only calls presenting one of its tokens. Needed
    /// when the driver requires tokens.
    #[arg(long, env = "SLUICE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: sluice_proto::tls::TlsArgs,
}

/// mimalloc instead of glibc's allocator: the profile of a run showed glibc's `malloc`,
/// `free` and their consolidation at about 14% of all CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sluice_core::telemetry::init(args.log_json);
    sluice_kafka::decode::avro::limit_allocations();
    sluice_core::failpoint::warn_if_ignored();
    let accepted_tokens = match args
        .auth_token_file
        .as_deref()
        .map(sluice_proto::auth::read_tokens)
    {
        Some(Ok(tokens)) => Some(tokens),
        Some(Err(message)) => {
            eprintln!("error: {message}");
            return std::process::ExitCode::FAILURE;
        }
        None => None,
    };
    let tls = match sluice_proto::tls::Tls::load(&args.tls) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let driver_token =
        sluice_proto::auth::BearerToken::first_of(accepted_tokens.as_deref().unwrap_or(&[]));
    let config = ExecutorConfig {
        driver_url: args.driver,
        bind: args.bind,
        flight_bind: args.flight_bind,
        shuffle_memory_bytes: args.shuffle_memory_bytes,
        spill_dir: args.spill_dir,
        http_bind: args.http_bind,
        advertise_host: args.advertise_host,
        task_slots: args.slots,
        executor_id: args.id,
        kafka_read_ahead: args.kafka_read_ahead,
        state_cache_bytes: args.state_cache_bytes,
        driver_token,
        accepted_tokens,
        tls,
    };
    match sluice_executor::run(config, sluice_core::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
