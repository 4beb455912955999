//! Live executors: registered over gRPC, kept alive by heartbeats, picked for tasks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::ExecutorId;
use sluice_proto::auth::{BearerToken, ExecutorApiClient};
use sluice_proto::tls::Tls;
use tracing::{info, warn};

/// One registered executor.
#[derive(Debug)]
pub struct ExecutorHandle {
    pub id: ExecutorId,
    pub address: String,
    /// Where it serves shuffle outputs (Arrow Flight).
    pub flight_address: String,
    pub slots: u32,
    pub client: ExecutorApiClient,
    /// Tasks this driver has in flight on the executor.
    pub in_flight: AtomicU32,
    /// Jobs whose spec and stage plans the executor has, as `job@fingerprint`.
    pub prepared: Mutex<HashSet<String>>,
    last_seen: Mutex<Instant>,
}

impl ExecutorHandle {
    fn load(&self) -> f64 {
        self.in_flight.load(Ordering::Relaxed) as f64 / self.slots.max(1) as f64
    }
}

/// The set of live executors.
#[derive(Debug)]
pub struct Registry {
    executors: Mutex<HashMap<String, Arc<ExecutorHandle>>>,
    timeout: Duration,
    /// Presented on every call to an executor (the cluster token; none without auth).
    token: BearerToken,
    /// Verifies executors serving `https://` (and presents the driver's certificate).
    tls: Tls,
}

impl Registry {
    pub fn new(timeout: Duration, token: BearerToken, tls: Tls) -> Registry {
        Registry {
            executors: Mutex::new(HashMap::new()),
            timeout,
            token,
            tls,
        }
    }

    /// Adds (or replaces) an executor; the client connects lazily.
    pub fn register(
        &self,
        id: String,
        address: String,
        flight_address: String,
        slots: u32,
    ) -> Result<(), String> {
        let endpoint = self
            .tls
            .endpoint(&address)
            .map_err(|e| format!("executor address: {e}"))?
            .connect_timeout(Duration::from_secs(3));
        let client = self
            .token
            .clone()
            .executor_client(endpoint.connect_lazy())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let handle = Arc::new(ExecutorHandle {
            id: ExecutorId::new(id.clone()),
            address: address.clone(),
            flight_address,
            slots: slots.max(1),
            client,
            in_flight: AtomicU32::new(0),
            prepared: Mutex::new(HashSet::new()),
            last_seen: Mutex::new(Instant::now()),
        });
        info!(executor = %id, %address, slots, "executor registered");
        self.executors
            .lock()
            .expect("registry lock")
            .insert(id, handle);
        Ok(())
    }

    /// Records a heartbeat; false when the executor is unknown (it must register again).
    pub fn heartbeat(&self, id: &str) -> bool {
        match self.executors.lock().expect("registry lock").get(id) {
            Some(handle) => {
                *handle.last_seen.lock().expect("heartbeat lock") = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Forgets an executor that failed a call; it registers again if it is alive.
    pub fn remove(&self, id: &str, reason: &str) {
        if self
            .executors
            .lock()
            .expect("registry lock")
            .remove(id)
            .is_some()
        {
            warn!(executor = %id, reason, "executor removed");
        }
    }

    /// The live executor serving shuffle outputs at `flight_address`, if any.
    pub fn by_flight_address(&self, flight_address: &str) -> Option<Arc<ExecutorHandle>> {
        self.executors
            .lock()
            .expect("registry lock")
            .values()
            .find(|h| h.flight_address == flight_address)
            .cloned()
    }

    /// Live executors, dropping those whose heartbeats stopped.
    pub fn alive(&self) -> Vec<Arc<ExecutorHandle>> {
        let mut executors = self.executors.lock().expect("registry lock");
        let timeout = self.timeout;
        executors.retain(|id, handle| {
            let fresh = handle.last_seen.lock().expect("heartbeat lock").elapsed() < timeout;
            if !fresh {
                warn!(executor = %id, "executor lost: no heartbeat");
            }
            fresh
        });
        executors.values().cloned().collect()
    }

    /// Executor `prefer` when it is alive and has a free task slot, else the least-loaded
    /// live executor, avoiding `exclude` when another exists.
    pub fn pick(&self, exclude: Option<&str>, prefer: Option<&str>) -> Option<Arc<ExecutorHandle>> {
        let alive = self.alive();
        if let Some(preferred) = alive.iter().find(|h| {
            Some(h.id.as_str()) == prefer && Some(h.id.as_str()) != exclude && h.load() < 1.0
        }) {
            return Some(preferred.clone());
        }
        let candidates: Vec<_> = alive
            .iter()
            .filter(|h| Some(h.id.as_str()) != exclude)
            .cloned()
            .collect();
        let pool = if candidates.is_empty() {
            alive
        } else {
            candidates
        };
        pool.into_iter()
            .min_by(|a, b| a.load().total_cmp(&b.load()).then_with(|| a.id.cmp(&b.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let registry = Registry::new(Duration::from_secs(60), BearerToken::default(), Tls::none());
        for id in ["a", "b"] {
            let address = format!("http://127.0.0.1:1/{id}");
            registry
                .register(id.into(), address, String::new(), 1)
                .unwrap();
        }
        registry
    }

    #[tokio::test]
    async fn a_preferred_executor_with_a_free_slot_is_picked_else_the_least_loaded() {
        let registry = registry();
        let picked = |exclude, prefer| registry.pick(exclude, prefer).unwrap().id.to_string();
        assert_eq!(picked(None, None), "a", "equal load: by id");
        assert_eq!(picked(None, Some("b")), "b");
        assert_eq!(
            picked(Some("b"), Some("b")),
            "a",
            "an excluded preference loses"
        );
        assert_eq!(picked(None, Some("gone")), "a");
        let b = registry
            .alive()
            .into_iter()
            .find(|h| h.id.as_str() == "b")
            .unwrap();
        b.in_flight.store(1, Ordering::Relaxed);
        assert_eq!(
            picked(None, Some("b")),
            "a",
            "a full preferred executor is passed over"
        );
    }
}
