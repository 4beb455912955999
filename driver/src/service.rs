//! The driver's gRPC service: tonic impls only (decode, call, map the error). The
//! process's terms of leadership, which serve it, are `crate::leadership`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sluice_iceberg::catalog::open_catalog;
use sluice_iceberg::overview::table_overview;
use sluice_iceberg::sink::table_ident;
use sluice_proto::v1::driver_server::Driver;
use sluice_proto::v1::{
    BatchProgress, DescribeTableRequest, GetJobStatusRequest, HeartbeatRequest, HeartbeatResponse,
    JobStatus, ListJobsRequest, ListJobsResponse, RegisterExecutorRequest,
    RegisterExecutorResponse, SnapshotDescription, StopJobRequest, StopJobResponse,
    SubmitJobRequest, SubmitJobResponse, TableDescription, WatchJobRequest,
};
use sluice_proto::PROTOCOL_VERSION;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::{Error, Result};
use crate::manager::{JobManager, STATUS_RECENT_BATCHES};
use crate::registry::Registry;

pub(crate) struct DriverService {
    pub(crate) registry: Arc<Registry>,
    pub(crate) manager: Arc<JobManager>,
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

/// The largest job spec accepted; real specs are a few KiB (tonic refuses any request over
/// 4 MiB before it is decoded).
pub const MAX_SPEC_BYTES: usize = 256 * 1024;

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
        let flight_address = required(&r.flight_address, "flight_address")?;
        self.registry
            .register(
                id.to_string(),
                address.to_string(),
                flight_address.to_string(),
                r.task_slots,
            )
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
        if spec.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "the spec is {} bytes; at most {MAX_SPEC_BYTES} are accepted",
                spec.len()
            )));
        }
        let (job_id, table_location) = self.manager.submit(&spec).await?;
        Ok(Response::new(SubmitJobResponse {
            job_id: job_id.into(),
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

    async fn describe_table(
        &self,
        request: Request<DescribeTableRequest>,
    ) -> Result<Response<TableDescription>, Status> {
        let r = request.into_inner();
        let job = self.manager.job(required(&r.job_id, "job_id")?)?;
        let sink = &job.spec.sink.iceberg;
        let ident = table_ident(sink);
        let catalog = open_catalog(&sink.catalog).await.map_err(Error::from)?;
        let table = catalog
            .load_table(&ident)
            .await
            .map_err(sluice_core::Error::iceberg(format!(
                "loading table {ident}"
            )))
            .map_err(Error::from)?;
        let overview = table_overview(&table, DESCRIBED_SNAPSHOTS);
        Ok(Response::new(TableDescription {
            table: format!("{}.{}", sink.namespace, sink.table),
            location: overview.location,
            partition_fields: overview.partition_fields,
            snapshots: overview.snapshots,
            data_files: overview.data_files,
            total_bytes: overview.total_bytes,
            total_records: overview.total_records,
            recent_snapshots: overview
                .recent
                .into_iter()
                .map(|s| SnapshotDescription {
                    snapshot_id: s.snapshot_id,
                    timestamp_ms: s.timestamp_ms,
                    operation: s.operation,
                    batch_id: s.batch_id.unwrap_or(-1),
                    added_files: s.added_files,
                    added_records: s.added_records,
                })
                .collect(),
        }))
    }
}

/// Snapshots `DescribeTable` lists.
const DESCRIBED_SNAPSHOTS: usize = 10;
