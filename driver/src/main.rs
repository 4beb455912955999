use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use sluice_driver::DriverConfig;

/// Sluice driver: plans micro-batches, schedules them on executors, commits them to Iceberg.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// gRPC listen address for executors and clients.
    #[arg(long, env = "SLUICE_DRIVER_BIND", default_value = "127.0.0.1:50051")]
    bind: SocketAddr,
    /// HTTP listen address: /healthz, /readyz (leader), /metrics, / (status page).
    #[arg(
        long,
        env = "SLUICE_DRIVER_HTTP_BIND",
        default_value = "127.0.0.1:8080"
    )]
    http_bind: SocketAddr,
    /// etcd endpoints (comma-separated); without them the embedded store is used.
    #[arg(long, env = "SLUICE_ETCD", value_delimiter = ',')]
    etcd: Vec<String>,
    /// Directory of the embedded checkpoint store (used without --etcd).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    data_dir: PathBuf,
    /// Seconds without heartbeat after which an executor is declared lost.
    #[arg(long, env = "SLUICE_EXECUTOR_TIMEOUT_SECS", default_value_t = 10)]
    executor_timeout_secs: u64,
    /// Seconds the leader lease lives; a standby takes over this long after the leader dies.
    #[arg(long, env = "SLUICE_LEADER_LEASE_SECS", default_value_t = 3)]
    leader_lease_secs: u64,
    /// Seconds a task may run on an executor before the driver gives up on that attempt
    /// (and runs it elsewhere): a stalled executor cannot hold a batch open for ever.
    #[arg(long, env = "SLUICE_TASK_TIMEOUT_SECS", default_value_t = 600)]
    task_timeout_secs: u64,
    /// Log as JSON lines.
    #[arg(long, env = "SLUICE_LOG_JSON")]
    log_json: bool,
    /// File of bearer tokens (one per line) every gRPC call must present, executors'
    /// registrations included; without it the API is open (fine on loopback only).
    #[arg(long, env = "SLUICE_AUTH_TOKEN_FILE")]
    auth_token_file: Option<PathBuf>,
    /// Running jobs at most; further submissions get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SLUICE_MAX_JOBS", default_value_t = sluice_driver::DEFAULT_MAX_JOBS)]
    max_jobs: usize,
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
    sluice_core::failpoint::warn_if_ignored();
    let auth_tokens = match &args.auth_token_file {
        Some(path) => match sluice_proto::auth::read_tokens(path) {
            Ok(tokens) => Some(tokens),
            Err(message) => {
                eprintln!("error: {message}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => {
            tracing::warn!(bind = %args.bind, "no --auth-token-file: the gRPC API accepts every caller; keep it on loopback or a private network");
            None
        }
    };
    let tls = match sluice_proto::tls::Tls::load(&args.tls) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if !tls.serves_tls() {
        tracing::warn!(bind = %args.bind, "no --tls-cert: the gRPC API is plaintext; keep it on loopback or a private network");
    }
    let config = DriverConfig {
        bind: args.bind,
        http_bind: args.http_bind,
        etcd_endpoints: args.etcd,
        embedded_store: args.data_dir.join("checkpoints.json"),
        executor_timeout: Duration::from_secs(args.executor_timeout_secs),
        leader_lease: Duration::from_secs(args.leader_lease_secs.max(1)),
        task_timeout: Duration::from_secs(args.task_timeout_secs.max(1)),
        auth_tokens,
        max_jobs: args.max_jobs.max(1),
        tls,
    };
    match sluice_driver::run(config, sluice_core::telemetry::shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
