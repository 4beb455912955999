//! The driver's gRPC service (tonic impls only: decode, call, map the error) and its
//! process lifecycle.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_common::checkpoint::open_store;
use sluice_proto::v1::driver_server::{Driver, DriverServer};
use sluice_proto::v1::{
    BatchProgress, GetJobStatusRequest, HeartbeatRequest, HeartbeatResponse, JobStatus,
    ListJobsRequest, ListJobsResponse, RegisterExecutorRequest, RegisterExecutorResponse,
    StopJobRequest, StopJobResponse, SubmitJobRequest, SubmitJobResponse, WatchJobRequest,
};
use sluice_proto::PROTOCOL_VERSION;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};
use tracing::info;

use crate::error::{Error, Result};
use crate::manager::{JobManager, STATUS_RECENT_BATCHES};
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::DriverConfig;

struct DriverService {
    registry: Arc<Registry>,
    manager: Arc<JobManager>,
}

fn check_protocol(version: u32) -> Result<(), Status> {
    if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "protocol version {version} is not supported; this driver speaks {PROTOCOL_VERSION}"
        )))
    }
}

fn required<'a>(value: &'a str, field: &str) -> Result<&'a str, Status> {
    if value.trim().is_empty() {
        Err(Status::invalid_argument(format!("{field} is missing")))
    } else {
        Ok(value)
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<BatchProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Driver for DriverService {
    async fn register_executor(
        &self,
        request: Request<RegisterExecutorRequest>,
    ) -> Result<Response<RegisterExecutorResponse>, Status> {
        let r = request.into_inner();
        check_protocol(r.protocol_version)?;
        let id = required(&r.executor_id, "executor_id")?;
        let address = required(&r.address, "address")?;
        self.registry
            .register(id.to_string(), address.to_string(), r.task_slots)
            .map_err(Status::invalid_argument)?;
        Ok(Response::new(RegisterExecutorResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = request.into_inner();
        check_protocol(r.protocol_version)?;
        let id = required(&r.executor_id, "executor_id")?;
        Ok(Response::new(HeartbeatResponse {
            known: self.registry.heartbeat(id),
        }))
    }

    async fn submit_job(
        &self,
        request: Request<SubmitJobRequest>,
    ) -> Result<Response<SubmitJobResponse>, Status> {
        let spec = request.into_inner().spec;
        required(&spec, "spec")?;
        let (job_id, table_location) = self.manager.submit(&spec).await?;
        Ok(Response::new(SubmitJobResponse {
            job_id,
            table_location,
        }))
    }

    async fn list_jobs(
        &self,
        _request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        Ok(Response::new(ListJobsResponse {
            jobs: self.manager.list(),
        }))
    }

    async fn get_job_status(
        &self,
        request: Request<GetJobStatusRequest>,
    ) -> Result<Response<JobStatus>, Status> {
        let r = request.into_inner();
        let job = self.manager.job(required(&r.job_id, "job_id")?)?;
        Ok(Response::new(job.status(STATUS_RECENT_BATCHES)))
    }

    type WatchJobStream = ProgressStream;

    async fn watch_job(
        &self,
        request: Request<WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let r = request.into_inner();
        let job = self.manager.job(required(&r.job_id, "job_id")?)?;
        let mut events = job.progress.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let state = job.state();
        tokio::spawn(async move {
            if state.is_final() {
                let status = job.status(0);
                let _ = tx
                    .send(Ok(BatchProgress {
                        job_id: status.job_id,
                        batch_id: -1,
                        job_state: status.state,
                        message: status.message,
                        ..Default::default()
                    }))
                    .await;
                return;
            }
            loop {
                match events.recv().await {
                    Ok(progress) => {
                        let last = !progress.job_state.is_empty();
                        if tx.send(Ok(progress)).await.is_err() || last {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stop_job(
        &self,
        request: Request<StopJobRequest>,
    ) -> Result<Response<StopJobResponse>, Status> {
        let r = request.into_inner();
        self.manager.stop(required(&r.job_id, "job_id")?).await?;
        Ok(Response::new(StopJobResponse {}))
    }
}

/// Runs a driver until `shutdown` completes: running batches commit, then it exits.
pub async fn run(
    config: DriverConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = open_store(&config.etcd_endpoints, &config.embedded_store).await?;
    let registry = Arc::new(Registry::new(config.executor_timeout));
    let manager = JobManager::new(store, Scheduler::new(registry.clone()));
    let listener = tokio::net::TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
    let local = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.bind,
        source,
    })?;
    info!(address = %local, store = if config.etcd_endpoints.is_empty() { "embedded" } else { "etcd" }, "driver listening");
    manager.resume_jobs().await?;
    let service = DriverService {
        registry,
        manager: manager.clone(),
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let shutdown_manager = manager.clone();
    tokio::spawn(async move {
        shutdown.await;
        info!("finishing running batches before exit");
        shutdown_manager.shutdown().await;
        let _ = stop_tx.send(true);
    });
    tonic::transport::Server::builder()
        .add_service(DriverServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = stop_rx.wait_for(|stop| *stop).await;
        })
        .await?;
    info!("driver stopped");
    Ok(())
}
