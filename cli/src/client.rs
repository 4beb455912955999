//! The gRPC client side of the CLI: submit, list, status, watch, stop.

use anyhow::{bail, Context, Result};
use sluice_proto::auth::{BearerToken, DriverApiClient};
use sluice_proto::tls::Tls;
use sluice_proto::v1::{
    BatchProgress, DescribeTableRequest, GetJobStatusRequest, JobStatus, ListJobsRequest,
    StopJobRequest, SubmitJobRequest, TableDescription, WatchJobRequest,
};

/// How the CLI reaches the driver: its addresses, the token it presents and the TLS it
/// verifies the driver with.
pub struct DriverAccess {
    /// Comma-separated URLs; an address without a scheme is `https://` when a CA is given.
    pub drivers: String,
    pub token: BearerToken,
    pub tls: Tls,
}

impl DriverAccess {
    /// A local cluster's driver: plaintext, without a token.
    pub fn local(url: &str) -> DriverAccess {
        DriverAccess {
            drivers: url.to_string(),
            token: BearerToken::default(),
            tls: Tls::none(),
        }
    }

    /// Connects to the first driver that answers; every call presents the token (none for
    /// a driver without authentication).
    pub async fn connect(&self) -> Result<DriverApiClient> {
        let mut last_error = None;
        let scheme = if self.tls.verifies_servers() {
            "https"
        } else {
            "http"
        };
        for url in self
            .drivers
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            let url = if url.contains("://") {
                url.to_string()
            } else {
                format!("{scheme}://{url}")
            };
            let endpoint = self
                .tls
                .endpoint(&url)
                .with_context(|| format!("driver address {url}"))?
                .connect_timeout(std::time::Duration::from_secs(3));
            match endpoint.connect().await {
                Ok(channel) => {
                    return Ok(self
                        .token
                        .clone()
                        .client(channel)
                        .max_decoding_message_size(64 << 20))
                }
                Err(e) => last_error = Some(format!("{url}: {}", with_causes(&e))),
            }
        }
        bail!(
            "no driver reachable at {} ({}); start one with `sluice local` or pass --driver",
            self.drivers,
            last_error.unwrap_or_else(|| "no address given".into())
        )
    }
}

/// An error with its chain of causes, e.g. `transport error: invalid peer certificate:
/// Expired`, so a refused TLS handshake says why.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
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
