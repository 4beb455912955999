//! The executor's gRPC service and its process lifecycle. Listeners are bound BEFORE the
//! executor registers, so the driver never dials an address that is not yet served.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use sluice_proto::v1::executor_server::{Executor, ExecutorServer};
use sluice_proto::v1::{
    task_result, PrepareJobRequest, PrepareJobResponse, TaskDefinition, TaskFailure, TaskResult,
};
use tokio::sync::{watch, RwLock, Semaphore};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::kafka_reader::ConsumerPool;
use crate::metrics::{self, ExecutorMetrics};
use crate::registration::{stay_registered, Identity};
use crate::task::{failure, run_task, task_ranges, PreparedJob};
use crate::ExecutorConfig;

struct ExecutorService {
    jobs: RwLock<HashMap<String, Arc<PreparedJob>>>,
    pool: Arc<ConsumerPool>,
    slots: Arc<Semaphore>,
    metrics: Arc<ExecutorMetrics>,
}

fn task_failure(retryable: bool, kind: &str, message: String) -> TaskResult {
    TaskResult {
        outcome: Some(task_result::Outcome::Failure(TaskFailure {
            retryable,
            kind: kind.into(),
            message,
        })),
    }
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
        let job = PreparedJob::prepare(&request.spec_json)
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
            return Ok(Response::new(task_failure(
                true,
                "unknown_job",
                format!("job {} is not prepared on this executor", task.job_id),
            )));
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
        let outcome = run_task(job, self.pool.clone(), &task, ranges).await;
        metrics.running.fetch_sub(1, Ordering::Relaxed);
        metrics
            .task_seconds
            .lock()
            .expect("histogram lock")
            .observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            Ok(success) => {
                metrics.tasks_succeeded.fetch_add(1, Ordering::Relaxed);
                metrics
                    .records_read
                    .fetch_add(success.input_rows, Ordering::Relaxed);
                task_result::Outcome::Success(success)
            }
            Err(error) => {
                metrics.tasks_failed.fetch_add(1, Ordering::Relaxed);
                warn!(job = %task.job_id, batch = task.batch_id, task = task.task_id, %error, "task failed");
                task_result::Outcome::Failure(failure(&error))
            }
        };
        Ok(Response::new(TaskResult {
            outcome: Some(outcome),
        }))
    }
}

/// Runs an executor until `shutdown` completes; running tasks finish first.
pub async fn run(
    config: ExecutorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let (listener, local) = bind(config.bind).await?;
    let host = config
        .advertise_host
        .clone()
        .unwrap_or_else(|| local.ip().to_string());
    let identity = Identity {
        executor_id: config
            .executor_id
            .clone()
            .unwrap_or_else(|| format!("executor-{}", uuid::Uuid::new_v4().simple())),
        address: format!("http://{host}:{}", local.port()),
        task_slots: config.task_slots.max(1),
    };
    info!(executor = %identity.executor_id, address = %identity.address, slots = identity.task_slots, "executor listening");
    let metrics = Arc::new(ExecutorMetrics::default());
    let service = ExecutorService {
        jobs: RwLock::new(HashMap::new()),
        pool: Arc::new(ConsumerPool::default()),
        slots: Arc::new(Semaphore::new(identity.task_slots as usize)),
        metrics: metrics.clone(),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let (http, http_addr) = bind(config.http_bind).await?;
    info!(address = %http_addr, "http (health, metrics) listening");
    tokio::spawn(sluice_common::http::serve(
        http,
        metrics::handler(metrics.clone()),
        stop_rx.clone(),
    ));
    let registration = tokio::spawn(stay_registered(
        config.driver_url.clone(),
        identity,
        metrics,
        stop_rx.clone(),
    ));
    let mut server_stop = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(ExecutorServer::new(service).max_decoding_message_size(64 << 20))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = server_stop.wait_for(|stop| *stop).await;
        });
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
    sluice_common::net::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}
