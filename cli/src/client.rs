//! The gRPC client side of the CLI: submit, list, status, watch, stop.

use anyhow::{bail, Context, Result};
use sluice_proto::auth::{BearerToken, DriverApiClient};
use sluice_proto::v1::{
    BatchProgress, DescribeTableRequest, GetJobStatusRequest, JobStatus, ListJobsRequest,
    StopJobRequest, SubmitJobRequest, TableDescription, WatchJobRequest,
};
use tonic::transport::Channel;

/// Connects to the first driver in `drivers` (comma-separated URLs) that answers; every
/// call presents `token` (none for a driver without authentication).
pub async fn connect(drivers: &str, token: &BearerToken) -> Result<DriverApiClient> {
    let mut last_error = None;
    for url in drivers.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let url = if url.contains("://") {
            url.to_string()
        } else {
            format!("http://{url}")
        };
        let endpoint = Channel::from_shared(url.clone())
            .with_context(|| format!("invalid driver address {url}"))?
            .connect_timeout(std::time::Duration::from_secs(3));
        match endpoint.connect().await {
            Ok(channel) => {
                return Ok(token
                    .clone()
                    .client(channel)
                    .max_decoding_message_size(64 << 20))
            }
            Err(e) => last_error = Some(format!("{url}: {e}")),
        }
    }
    bail!(
        "no driver reachable at {drivers} ({}); start one with `sluice local` or pass --driver",
        last_error.unwrap_or_else(|| "no address given".into())
    )
}

/// Turns a gRPC status into an error that reads well on a terminal.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

pub async fn submit(client: &mut DriverApiClient, spec: String) -> Result<(String, String)> {
    let reply = client
        .submit_job(SubmitJobRequest { spec })
        .await
        .map_err(status_error)?
        .into_inner();
    Ok((reply.job_id, reply.table_location))
}

pub async fn list(client: &mut DriverApiClient) -> Result<Vec<JobStatus>> {
    Ok(client
        .list_jobs(ListJobsRequest {})
        .await
        .map_err(status_error)?
        .into_inner()
        .jobs)
}

pub async fn status(client: &mut DriverApiClient, job_id: &str) -> Result<JobStatus> {
    Ok(client
        .get_job_status(GetJobStatusRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

pub async fn describe_table(
    client: &mut DriverApiClient,
    job_id: &str,
) -> Result<TableDescription> {
    Ok(client
        .describe_table(DescribeTableRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner())
}

pub async fn stop(client: &mut DriverApiClient, job_id: &str) -> Result<()> {
    client
        .stop_job(StopJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_error)?;
    Ok(())
}

/// Streams a job's progress to `on_batch` until the job ends or `on_batch` returns false;
/// pause notices are printed to stderr. Returns the final record (job state and message)
/// when the job ended.
pub async fn watch(
    client: &mut DriverApiClient,
    job_id: &str,
    mut on_batch: impl FnMut(&BatchProgress) -> bool,
) -> Result<Option<BatchProgress>> {
    let mut stream = client
        .watch_job(WatchJobRequest {
            job_id: job_id.to_string(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    while let Some(progress) = stream.message().await.map_err(status_error)? {
        if !progress.job_state.is_empty() {
            return Ok(Some(progress));
        }
        if progress.batch_id < 0 {
            eprintln!("paused: {}", progress.message);
            continue;
        }
        if !on_batch(&progress) {
            return Ok(None);
        }
    }
    Ok(None)
}
