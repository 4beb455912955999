//! Registering with the driver and heartbeating; registers again when the driver forgets
//! this executor (a restarted driver) or becomes unreachable for a while.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::ExecutorId;

use sluice_proto::auth::{BearerToken, DriverApiClient};
use sluice_proto::tls::Tls;
use sluice_proto::v1::{HeartbeatRequest, RegisterExecutorRequest};
use sluice_proto::PROTOCOL_VERSION;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::metrics::ExecutorMetrics;
use crate::HEARTBEAT_INTERVAL;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Deadline of every call to a driver: a paused or partitioned driver is given up on
/// within two heartbeat periods, and the next `--driver` address is tried.
const DRIVER_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Who this executor is, as told to the driver.
pub struct Identity {
    pub executor_id: ExecutorId,
    pub address: String,
    pub flight_address: String,
    pub task_slots: u32,
}

/// Keeps the executor registered with the serving (leader) driver until `shutdown` turns
/// true. `driver_urls` is comma-separated; on failure the next one is tried, so the
/// executor follows a driver failover. Fails only when a driver refuses this executor
/// (protocol mismatch).
pub async fn stay_registered(
    driver_urls: String,
    token: BearerToken,
    tls: Tls,
    identity: Identity,
    metrics: Arc<ExecutorMetrics>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let endpoints = driver_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            tls.endpoint(url).map_err(|e| Error::DriverUrl {
                url: url.to_string(),
                message: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    if endpoints.is_empty() {
        return Err(Error::DriverUrl {
            url: driver_urls,
            message: "no driver address given".into(),
        });
    }
    let mut current = 0;
    let mut backoff = Duration::from_millis(100);
    let mut registered = false;
    let mut client: Option<DriverApiClient> = None;
    while !*shutdown.borrow() {
        let step = async {
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    let channel = endpoints[current]
                        .clone()
                        .connect_timeout(DRIVER_CALL_TIMEOUT)
                        .timeout(DRIVER_CALL_TIMEOUT)
                        .connect()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    client.insert(token.clone().client(channel))
                }
            };
            if !registered {
                c.register_executor(RegisterExecutorRequest {
                    executor_id: identity.executor_id.to_string(),
                    address: identity.address.clone(),
                    flight_address: identity.flight_address.clone(),
                    task_slots: identity.task_slots,
                    protocol_version: PROTOCOL_VERSION,
                })
                .await?;
                info!(executor = %identity.executor_id, driver = %endpoints[current].uri(), "registered with the driver");
                registered = true;
            }
            let reply = c
                .heartbeat(HeartbeatRequest {
                    executor_id: identity.executor_id.to_string(),
                    protocol_version: PROTOCOL_VERSION,
                    running_tasks: metrics.running.load(Ordering::Relaxed),
                })
                .await?
                .into_inner();
            if !reply.known {
                info!("the driver does not know this executor; registering again");
                registered = false;
            }
            Ok::<(), tonic::Status>(())
        };
        let outcome = step.await;
        metrics
            .registered
            .store(outcome.is_ok() && registered, Ordering::Relaxed);
        let wait = match outcome {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if registered {
                    HEARTBEAT_INTERVAL
                } else {
                    Duration::ZERO
                }
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Error::Refused(status));
            }
            Err(status) => {
                warn!(driver = %endpoints[current].uri(), error = %status.message(), "driver unreachable; trying the next");
                client = None;
                registered = false;
                current = (current + 1) % endpoints.len();
                if current == 0 {
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    backoff
                } else {
                    Duration::ZERO
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    Ok(())
}
