//! Driver leadership through an etcd election, and the fence that makes a deposed
//! leader's checkpoint writes fail.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::error::{Error, Result};

/// The election every driver of a cluster campaigns in.
pub const LEADER_ELECTION: &str = "/sluice/leader";

/// Proof of leadership: the leader key and its create revision. A write guarded by it
/// succeeds only while this key (held by our lease) still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
}

/// Held leadership: the fence, and a signal that turns true when the lease is lost.
pub struct Leadership {
    pub fence: Fence,
    pub lease: i64,
    pub lost: watch::Receiver<bool>,
    client: Client,
}

impl Leadership {
    /// Gives leadership up at once (for a clean shutdown or in tests).
    pub async fn resign(mut self) -> Result<()> {
        self.client
            .lease_revoke(self.lease)
            .await
            .map_err(|e| Error::Checkpoint {
                message: format!("revoking leader lease: {e}"),
            })?;
        Ok(())
    }
}

/// Campaigns for leadership and returns once this process leads; `candidate` names it
/// (its address). The lease lives `ttl`; it is kept alive every `ttl / 3`.
pub async fn campaign(endpoints: &[String], candidate: &str, ttl: Duration) -> Result<Leadership> {
    let err = |what: &str| {
        let what = what.to_string();
        move |e: etcd_client::Error| Error::Checkpoint {
            message: format!("etcd {what}: {e}"),
        }
    };
    // No request timeout: a campaign waits as long as another driver leads.
    let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
    let mut client = Client::connect(endpoints, Some(options))
        .await
        .map_err(err("connect"))?;
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(err("lease grant"))?
        .id();
    let (mut keeper, mut responses) = client
        .lease_keep_alive(lease)
        .await
        .map_err(err("lease keep-alive"))?;
    let (lost_tx, lost) = watch::channel(false);
    let interval = Duration::from_millis((ttl_secs as u64 * 1000 / 3).max(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let alive = async {
                keeper.keep_alive().await.ok()?;
                let response = responses.message().await.ok()??;
                (response.ttl() > 0).then_some(())
            };
            if tokio::time::timeout(interval * 2, alive)
                .await
                .ok()
                .flatten()
                .is_none()
            {
                warn!(lease, "leader lease lost");
                let _ = lost_tx.send(true);
                return;
            }
        }
    });
    info!(candidate, "campaigning for leadership");
    let response = client
        .campaign(LEADER_ELECTION, candidate, lease)
        .await
        .map_err(err("campaign"))?;
    let leader = response.leader().ok_or_else(|| Error::Checkpoint {
        message: "etcd campaign returned no leader key".into(),
    })?;
    info!(candidate, "elected leader");
    Ok(Leadership {
        fence: Fence {
            key: leader.key().to_vec(),
            revision: leader.rev(),
        },
        lease,
        lost,
        client,
    })
}
