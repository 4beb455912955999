//! The executor's gRPC service and its process lifecycle. Listeners are bound BEFORE the
//! executor registers, so the driver never dials an address that is not yet served.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_core::ExecutorId;
use sluice_proto::v1::executor_server::{Executor, ExecutorServer};
use sluice_proto::v1::{
    task_result, FailureKind, PrepareJobRequest, PrepareJobResponse, ReleaseShuffleRequest,
    ReleaseShuffleResponse, TaskDefinition, TaskFailure, TaskResult,
};
use tokio::sync::{RwLock, Semaphore};
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::error::{Error, Result};
use crate::flight::{FlightFetcher, FlightShuffleService};
use crate::metrics::{self, ExecutorMetrics};
use crate::prepared::PreparedJob;
use crate::registration::{stay_registered, Identity};
use crate::rewrite::rewrite_files;
use crate::shuffle_store::ShuffleStore;
use crate::source::ConsumerPool;
use crate::state::cache::StateCache;
use crate::task::{failure, run_task, task_ranges, TaskEnv};
use crate::ExecutorConfig;
use sluice_proto::auth::TokenCheck;
use tonic::service::interceptor::InterceptedService;

struct ExecutorService {
    jobs: RwLock<HashMap<String, Arc<PreparedJob>>>,
    env: Arc<TaskEnv>,
    slots: Arc<Semaphore>,
    metrics: Arc<ExecutorMetrics>,
}

/// A task's failure of `kind` that names no lost map output.
fn task_failure(retryable: bool, kind: FailureKind, message: String) -> task_result::Outcome {
    task_result::Outcome::Failure(TaskFailure {
        retryable,
        kind: kind.into(),
        message,
        lost_stage: None,
        lost_map_task: None,
    })
}

#[tonic::async_trait]
impl Executor for ExecutorService {
    async fn prepare_job(
        &self,
        request: Request<PrepareJobRequest>,
    ) -> Result<Response<PrepareJobResponse>, Status> {
        let request = request.into_inner();
        if request.job_id.is_empty() {
            return Err(Status::invalid_argument("job_id is missing"));
        }
        let job = PreparedJob::prepare(&request.spec_json, request.stages)
            .await
            .map_err(|e| Status::failed_precondition(format!("job {}: {e}", request.job_id)))?;
        self.jobs
            .write()
            .await
            .insert(request.job_id.clone(), Arc::new(job));
        info!(job = %request.job_id, "job prepared");
        Ok(Response::new(PrepareJobResponse {}))
    }

    async fn run_task(
        &self,
        request: Request<TaskDefinition>,
    ) -> Result<Response<TaskResult>, Status> {
        let task = request.into_inner();
        let ranges = task_ranges(&task).map_err(Status::invalid_argument)?;
        let Some(job) = self.jobs.read().await.get(&task.job_id).cloned() else {
            return Ok(Response::new(TaskResult {
                outcome: Some(task_failure(
                    true,
                    FailureKind::UnknownJob,
                    format!("job {} is not prepared on this executor", task.job_id),
                )),
            }));
        };
        let _slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("executor is shutting down"))?;
        let metrics = &self.metrics;
        metrics.running.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        // Its own tokio task, so that a panic anywhere in it fails this task only.
        let env = self.env.clone();
        let definition = task.clone();
        let outcome = tokio::spawn(async move {
            match &definition.rewrite {
                // A compaction task instead of a stage's.
                Some(rewrite) => rewrite_files(&job, &definition, rewrite).await,
                None => run_task(job, &env, &definition, ranges).await,
            }
        })
        .await
        .map_err(|e| panic_message(e.into_panic()));
        metrics.running.fetch_sub(1, Ordering::Relaxed);
        metrics
            .shuffle_memory_bytes
            .store(self.env.store.memory_used() as u64, Ordering::Relaxed);
        metrics
            .shuffle_spilled_bytes
            .store(self.env.store.spilled_bytes(), Ordering::Relaxed);
        metrics
            .task_seconds
            .lock()
            .expect("histogram lock")
            .observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Ok(Ok(success)) => {
                metrics.tasks_succeeded.fetch_add(1, Ordering::Relaxed);
                metrics
                    .records_read
                    .fetch_add(success.input_rows, Ordering::Relaxed);
                if !success.state_files.is_empty() {
                    metrics.record_state(&task.job_id, task.batch_id, success.state_bytes);
                }
                task_result::Outcome::Success(success)
            }
            Ok(Err(error)) => {
                metrics.tasks_failed.fetch_add(1, Ordering::Relaxed);
                warn!(job = %task.job_id, batch = task.batch_id, task = task.task_id, %error, "task failed");
                task_result::Outcome::Failure(failure(&error))
            }
            Err(panic) => {
                metrics.tasks_failed.fetch_add(1, Ordering::Relaxed);
                metrics.tasks_panicked.fetch_add(1, Ordering::Relaxed);
                error!(job = %task.job_id, batch = task.batch_id, task = task.task_id, %panic, "task panicked; the executor keeps serving");
                task_failure(
                    true,
                    FailureKind::Panic,
                    format!("the task panicked: {panic}"),
                )
            }
        };
        Ok(Response::new(TaskResult {
            outcome: Some(outcome),
        }))
    }

    async fn release_shuffle(
        &self,
        request: Request<ReleaseShuffleRequest>,
    ) -> Result<Response<ReleaseShuffleResponse>, Status> {
        let request = request.into_inner();
        self.env
            .store
            .release_batch(&request.job_id, request.batch_id);
        self.metrics
            .shuffle_memory_bytes
            .store(self.env.store.memory_used() as u64, Ordering::Relaxed);
        Ok(Response::new(ReleaseShuffleResponse {}))
    }
}

/// The message a panic was raised with.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs an executor until `shutdown` completes; running tasks finish first.
pub async fn run(
    config: ExecutorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (listener, local) = bind(config.bind).await?;
    let (flight_listener, flight_local) = bind(config.flight_bind).await?;
    let host = config
        .advertise_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let spill_dir = match &config.spill_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join("sluice-shuffle"),
    };
    std::fs::create_dir_all(&spill_dir).map_err(|source| Error::SpillDir {
        path: spill_dir.clone(),
        source,
    })?;
    let store = Arc::new(ShuffleStore::new(config.shuffle_memory_bytes, spill_dir));
    let identity = Identity {
        executor_id: ExecutorId::new(
            config
                .executor_id
                .clone()
                .unwrap_or_else(|| format!("executor-{}", uuid::Uuid::new_v4().simple())),
        ),
        address: format!("{}://{host}:{}", config.tls.scheme(), local.port()),
        flight_address: format!("{}://{host}:{}", config.tls.scheme(), flight_local.port()),
        task_slots: config.task_slots.max(1),
    };
    info!(executor = %identity.executor_id, address = %identity.address, flight = %identity.flight_address, slots = identity.task_slots, "executor listening");
    let metrics = Arc::new(ExecutorMetrics {
        state_cache: Arc::new(StateCache::new(config.state_cache_bytes)),
        ..Default::default()
    });
    let service = ExecutorService {
        jobs: RwLock::new(HashMap::new()),
        env: Arc::new(TaskEnv {
            pool: Arc::new(ConsumerPool::new(config.kafka_read_ahead)),
            store: store.clone(),
            fetcher: Arc::new(FlightFetcher::new(
                config.accepted_tokens.as_ref(),
                config.tls.clone(),
            )),
            state_cache: metrics.state_cache.clone(),
        }),
        slots: Arc::new(Semaphore::new(identity.task_slots as usize)),
        metrics: metrics.clone(),
    };
    let stop_rx = sluice_core::telemetry::stop_flag(shutdown);
    let (http, http_addr) = bind(config.http_bind).await?;
    info!(address = %http_addr, "http (health, metrics) listening");
    tokio::spawn(sluice_core::http::serve(
        http,
        metrics::handler(metrics.clone()),
        stop_rx.clone(),
    ));
    let registration = tokio::spawn(stay_registered(
        config.driver_url.clone(),
        config.driver_token.clone(),
        config.tls.clone(),
        identity,
        metrics,
        stop_rx.clone(),
    ));
    // With tokens, the task API and the shuffle outputs serve only callers presenting
    // one: the driver, and other executors fetching map outputs.
    let check = TokenCheck::optional(config.accepted_tokens.clone());
    let server_builder = || -> Result<sluice_proto::status::BoundedServer> {
        let builder = sluice_proto::status::server();
        Ok(match config.tls.server_config() {
            Some(tls) => builder.tls_config(tls)?,
            None => builder,
        })
    };
    tokio::spawn(
        server_builder()?
            .add_service(InterceptedService::new(
                arrow_flight::flight_service_server::FlightServiceServer::new(
                    FlightShuffleService::new(store),
                )
                .max_encoding_message_size(256 << 20),
                check.clone(),
            ))
            .serve_with_incoming_shutdown(
                Box::pin(sluice_core::net::incoming(flight_listener)),
                sluice_core::net::stopped(stop_rx.clone()),
            ),
    );
    let server = server_builder()?
        .add_service(InterceptedService::new(
            ExecutorServer::new(service).max_decoding_message_size(64 << 20),
            check,
        ))
        .serve_with_incoming_shutdown(
            Box::pin(sluice_core::net::incoming(listener)),
            sluice_core::net::stopped(stop_rx.clone()),
        );
    tokio::pin!(server);
    tokio::select! {
        served = &mut server => served?,
        registered = registration => {
            // Registration ends when refused, or on shutdown: then the server drains
            // its running tasks, which still reply to the driver.
            if let Ok(Err(e)) = registered {
                return Err(e);
            }
            info!("draining running tasks before exit");
            server.await?;
        }
    }
    info!("executor stopped");
    Ok(())
}

/// Binds a listener, naming the address when that fails.
async fn bind(
    addr: std::net::SocketAddr,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    sluice_core::net::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}
