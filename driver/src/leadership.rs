//! The driver process's lifecycle: terms of leadership. With etcd a driver campaigns,
//! serves the gRPC API and runs the jobs only while it leads, and on losing the lease stops
//! its jobs and stands by to campaign again; with the embedded store it leads alone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::auth::TokenCheck;
use sluice_proto::v1::driver_server::DriverServer;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::checkpoint::{campaign, CheckpointStore, EmbeddedStore, EtcdStore, Leadership};
use crate::error::{Error, Result};
use crate::http::{self, Term, TermView};
use crate::manager::JobManager;
use crate::registry::Registry;
use crate::scheduler::Scheduler;
use crate::service::DriverService;
use crate::DriverConfig;

/// Opens the checkpoint store. With etcd, first waits to become leader (a standby driver
/// waits here, not yet serving) and fences every later write by that leadership.
/// Returns `None` when shut down while waiting.
async fn open_leader_store(
    config: &DriverConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<Option<(Arc<dyn CheckpointStore>, Option<Leadership>)>> {
    if config.etcd_endpoints.is_empty() {
        let store = EmbeddedStore::open(&config.embedded_store)?;
        return Ok(Some((Arc::new(store), None)));
    }
    let store = EtcdStore::connect(&config.etcd_endpoints).await?;
    let candidate = config.bind.to_string();
    let leadership = tokio::select! {
        leadership = campaign(&config.etcd_endpoints, &candidate, config.leader_lease) => leadership?,
        _ = stop.wait_for(|stop| *stop) => return Ok(None),
    };
    store.set_fence(leadership.fence.clone());
    Ok(Some((Arc::new(store), Some(leadership))))
}

/// How a term of leadership ended.
enum TermEnd {
    Shutdown,
    LeadershipLost,
}

/// Runs a driver until `shutdown` completes: running batches commit, then it exits.
/// With etcd, the driver serves only while it is the leader; when it loses the
/// leadership (its lease expired, e.g. during an etcd outage) it stops its jobs, stops
/// serving and campaigns again.
pub async fn run(
    config: DriverConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut stop_rx = sluice_core::telemetry::stop_flag(shutdown);
    let view = TermView::default();
    let (http, http_addr) = bind(config.http_bind).await?;
    info!(address = %http_addr, "http (health, metrics, status page) listening");
    tokio::spawn(sluice_core::http::serve(
        http,
        http::handler(view.clone()),
        stop_rx.clone(),
    ));
    let mut retry = Duration::from_millis(500);
    loop {
        let term = match open_leader_store(&config, stop_rx.clone()).await {
            Ok(Some(term)) => term,
            Ok(None) => {
                info!("stopped while standing by");
                return Ok(());
            }
            Err(error) if !config.etcd_endpoints.is_empty() => {
                warn!(%error, retry_in = ?retry, "cannot campaign for leadership; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = stop_rx.wait_for(|stop| *stop) => return Ok(()),
                }
                retry = (retry * 2).min(Duration::from_secs(10));
                continue;
            }
            Err(error) => return Err(error),
        };
        retry = Duration::from_millis(500);
        match serve_term(&config, term, &view, stop_rx.clone()).await? {
            TermEnd::Shutdown => {
                info!("driver stopped");
                return Ok(());
            }
            TermEnd::LeadershipLost => {
                warn!("leadership lost: jobs stopped; standing by to campaign again");
            }
        }
    }
}

/// Serves as leader until shutdown or until the leadership is lost.
async fn serve_term(
    config: &DriverConfig,
    (store, leadership): (Arc<dyn CheckpointStore>, Option<Leadership>),
    view: &TermView,
    mut stop: watch::Receiver<bool>,
) -> Result<TermEnd> {
    let (_never_lost, never) = watch::channel(false);
    let mut lost = leadership.as_ref().map_or(never, |l| l.lost.clone());
    // The driver calls executors with the cluster token (the first of its own).
    let executor_token =
        sluice_proto::auth::BearerToken::first_of(config.auth_tokens.as_deref().unwrap_or(&[]));
    let registry = Arc::new(Registry::new(
        config.executor_timeout,
        executor_token,
        config.tls.clone(),
    ));
    let scheduler = Scheduler::new(registry.clone(), config.task_timeout);
    let manager = JobManager::new(store, scheduler.clone(), config.max_jobs);
    let (listener, local) = bind(config.bind).await?;
    info!(address = %local, store = if config.etcd_endpoints.is_empty() { "embedded" } else { "etcd" }, "driver listening");
    manager.resume_jobs().await?;
    view.set(Some(Term {
        manager: manager.clone(),
        registry: registry.clone(),
        scheduler,
    }));
    let service = DriverService {
        registry,
        manager: manager.clone(),
    };
    let (server_stop_tx, server_stop) = watch::channel(false);
    // With tokens every call is checked before it reaches the service.
    let (open, checked) = match &config.auth_tokens {
        Some(tokens) => (
            None,
            Some(DriverServer::with_interceptor(
                service,
                TokenCheck::new(tokens.clone()),
            )),
        ),
        None => (Some(DriverServer::new(service)), None),
    };
    // Server reflection, so grpcurl and other generic clients can discover the API (it
    // describes the API only; the calls themselves are checked as above).
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(sluice_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| sluice_core::Error::Io {
            context: "building gRPC reflection".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
    let mut builder = sluice_proto::status::server();
    if let Some(tls) = config.tls.server_config() {
        builder = builder.tls_config(tls)?;
    }
    // The server takes its stop signal when it comes (it runs as its own task) and then
    // closes its listener at once, dropping the incoming stream and with it this sender.
    let (listener_open, listener_closed) = tokio::sync::oneshot::channel::<()>();
    let incoming =
        futures::StreamExt::map(sluice_core::net::incoming(listener), move |connection| {
            let _open = &listener_open;
            connection
        });
    let mut server = tokio::spawn(
        builder
            .add_service(reflection)
            .add_optional_service(open)
            .add_optional_service(checked)
            .serve_with_incoming_shutdown(
                Box::pin(incoming),
                sluice_core::net::stopped(server_stop),
            ),
    );
    let end = tokio::select! {
        ended = &mut server => {
            served(ended)?;
            return Ok(TermEnd::Shutdown);
        }
        _ = stop.wait_for(|stop| *stop) => {
            info!("finishing running batches before exit");
            TermEnd::Shutdown
        }
        _ = lost.wait_for(|lost| *lost) => {
            error!("leadership lost; stopping jobs so that the new leader alone commits");
            TermEnd::LeadershipLost
        }
    };
    match end {
        // Running batches finish and commit; the API answers until they have.
        TermEnd::Shutdown => {
            view.set(None);
            manager.shutdown().await;
        }
        // A deposed leader first stops answering (its port refuses calls once the listener
        // is closed), so no client takes its word, or its stop, for the new leader's. Then
        // it commits nothing more: its batches are cancelled where they stand (the fence
        // and the conditional commit refuse them anyway).
        TermEnd::LeadershipLost => {
            let _ = server_stop_tx.send(true);
            let _ = listener_closed.await;
            view.set(None);
            manager.abort_all().await;
        }
    }
    let _ = server_stop_tx.send(true);
    served(server.await)?;
    if let (TermEnd::Shutdown, Some(leadership)) = (&end, leadership) {
        // Hand over at once instead of waiting for the lease to expire.
        if let Err(e) = leadership.resign().await {
            warn!(error = %e, "could not resign leadership");
        }
    }
    Ok(end)
}

/// What the gRPC server task ended with.
fn served(
    ended: std::result::Result<
        std::result::Result<(), tonic::transport::Error>,
        tokio::task::JoinError,
    >,
) -> Result<()> {
    ended.map_err(|e| sluice_core::Error::Io {
        context: "the gRPC server task".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
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
