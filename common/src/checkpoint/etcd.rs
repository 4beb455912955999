//! The etcd checkpoint store.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp};

use super::CheckpointStore;
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A checkpoint store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| Error::Checkpoint {
                message: format!("cannot connect to etcd at {}: {e}", endpoints.join(",")),
            })?;
        let store = EtcdStore {
            client,
            endpoints: endpoints.to_vec(),
        };
        // A connect is lazy; a read proves the cluster is there.
        store.get("/sluice/health").await?;
        Ok(store)
    }

    fn error(&self, what: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
        let what = what.to_string();
        move |e| Error::Checkpoint {
            message: format!("etcd {} {what}: {e}", self.endpoints.join(",")),
        }
    }
}

fn entry(kv: &etcd_client::KeyValue) -> (String, String) {
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
    )
}

#[async_trait]
impl CheckpointStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<String>> {
        let response = self
            .client
            .kv_client()
            .get(key, None)
            .await
            .map_err(self.error(&format!("get {key}")))?;
        Ok(response.kvs().first().map(|kv| entry(kv).1))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(options))
            .await
            .map_err(self.error(&format!("list {prefix}")))?;
        Ok(response.kvs().iter().map(entry).collect())
    }

    async fn last(&self, prefix: &str) -> Result<Option<(String, String)>> {
        let options = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        let response = self
            .client
            .kv_client()
            .get(prefix, Some(options))
            .await
            .map_err(self.error(&format!("last {prefix}")))?;
        Ok(response.kvs().first().map(entry))
    }

    async fn put_all(&self, entries: Vec<(String, String)>) -> Result<()> {
        let ops: Vec<TxnOp> = entries
            .into_iter()
            .map(|(k, v)| TxnOp::put(k, v, None))
            .collect();
        self.client
            .kv_client()
            .txn(Txn::new().and_then(ops))
            .await
            .map_err(self.error("transaction"))?;
        Ok(())
    }

    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()> {
        let options = etcd_client::DeleteOptions::new().with_range(before);
        self.client
            .kv_client()
            .delete(prefix, Some(options))
            .await
            .map_err(self.error(&format!("delete {prefix}..{before}")))?;
        Ok(())
    }
}
