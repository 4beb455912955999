//! The etcd checkpoint store.

use std::time::Duration;

use async_trait::async_trait;
use std::sync::{Arc, RwLock};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};

use super::election::Fence;
use super::CheckpointStore;
use crate::error::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A checkpoint store backed by an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
    /// When set, every write requires this leadership to still hold.
    fence: Arc<RwLock<Option<Fence>>>,
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
            fence: Arc::new(RwLock::new(None)),
        };
        // A connect is lazy; a read proves the cluster is there.
        store.get("/sluice/health").await?;
        Ok(store)
    }

    /// Guards every later write by `fence`: once the leadership is gone, writes fail.
    pub fn set_fence(&self, fence: Fence) {
        *self.fence.write().expect("fence lock") = Some(fence);
    }

    /// Runs `ops` in one transaction, under the fence when one is set.
    async fn fenced_txn(&self, ops: Vec<TxnOp>, what: &str) -> Result<()> {
        let response = self.txn_while_leading(vec![], ops, vec![], what).await?;
        if !response.succeeded() {
            return Err(self.fenced(what));
        }
        Ok(())
    }

    /// A transaction that runs `ops` when this driver still holds its leadership and every
    /// compare of `also` holds, and `otherwise` if not.
    async fn txn_while_leading(
        &self,
        also: Vec<Compare>,
        ops: Vec<TxnOp>,
        otherwise: Vec<TxnOp>,
        what: &str,
    ) -> Result<TxnResponse> {
        let fence = self.fence.read().expect("fence lock").clone();
        let mut compares = also;
        if let Some(fence) = &fence {
            compares.push(Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            ));
        }
        let txn = Txn::new().when(compares).and_then(ops).or_else(otherwise);
        self.client
            .kv_client()
            .txn(txn)
            .await
            .map_err(self.error(what))
    }

    fn fenced(&self, what: &str) -> Error {
        Error::Fenced {
            message: format!("{what} refused: this driver is no longer the leader"),
        }
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
        self.fenced_txn(ops, "checkpoint write").await
    }

    async fn put_new(&self, key: &str, value: String) -> Result<bool> {
        let what = "offset-log write";
        let absent = Compare::create_revision(key, CompareOp::Equal, 0);
        let put = TxnOp::put(key, value, None);
        let look = TxnOp::get(key, None);
        let response = self
            .txn_while_leading(vec![absent], vec![put], vec![look], what)
            .await?;
        if response.succeeded() {
            return Ok(true);
        }
        let exists = response
            .op_responses()
            .iter()
            .any(|r| matches!(r, TxnOpResponse::Get(get) if !get.kvs().is_empty()));
        if exists {
            Ok(false)
        } else {
            Err(self.fenced(what))
        }
    }

    fn term(&self) -> i64 {
        self.fence
            .read()
            .expect("fence lock")
            .as_ref()
            .map_or(0, |fence| fence.revision)
    }

    async fn check_fence(&self) -> Result<()> {
        let Some(fence) = self.fence.read().expect("fence lock").clone() else {
            return Ok(());
        };
        let response = self
            .client
            .kv_client()
            .get(fence.key.clone(), None)
            .await
            .map_err(self.error("leader key check"))?;
        let held = response
            .kvs()
            .first()
            .is_some_and(|kv| kv.create_revision() == fence.revision);
        if held {
            Ok(())
        } else {
            Err(Error::Fenced {
                message: format!(
                    "the leader key of term {} is gone: another driver leads",
                    fence.revision
                ),
            })
        }
    }

    async fn delete_range(&self, prefix: &str, before: &str) -> Result<()> {
        let options = etcd_client::DeleteOptions::new().with_range(before);
        let op = TxnOp::delete(prefix, Some(options));
        self.fenced_txn(vec![op], &format!("delete {prefix}..{before}"))
            .await
    }
}
