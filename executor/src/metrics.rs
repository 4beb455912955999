//! The executor's counters and its HTTP side: `/healthz`, `/readyz` (registered with a
//! driver) and `/metrics`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_core::http::{Handler, Histogram, HttpResponse, DURATION_BUCKETS};

use crate::state::cache::{StateCache, DEFAULT_STATE_CACHE_BYTES};

/// What an executor has done since it started.
#[derive(Debug)]
pub struct ExecutorMetrics {
    pub running: AtomicU32,
    pub registered: AtomicBool,
    pub tasks_succeeded: AtomicU64,
    pub tasks_failed: AtomicU64,
    /// Failed tasks that panicked (also counted in `tasks_failed`).
    pub tasks_panicked: AtomicU64,
    pub records_read: AtomicU64,
    /// Bytes of shuffle outputs held in memory.
    pub shuffle_memory_bytes: AtomicU64,
    /// Bytes of shuffle outputs spilled to disk since start.
    pub shuffle_spilled_bytes: AtomicU64,
    pub task_seconds: Mutex<Histogram>,
    /// Stateful jobs: the state this executor's tasks wrote for the latest batch of each
    /// job they ran, as job id -> (batch id, bytes).
    pub state: Mutex<HashMap<String, (i64, u64)>>,
    /// Decoded state files kept for the next batch (shared with the tasks).
    pub state_cache: Arc<StateCache>,
}

impl Default for ExecutorMetrics {
    fn default() -> Self {
        ExecutorMetrics {
            running: AtomicU32::new(0),
            registered: AtomicBool::new(false),
            tasks_succeeded: AtomicU64::new(0),
            tasks_failed: AtomicU64::new(0),
            tasks_panicked: AtomicU64::new(0),
            records_read: AtomicU64::new(0),
            shuffle_memory_bytes: AtomicU64::new(0),
            shuffle_spilled_bytes: AtomicU64::new(0),
            task_seconds: Mutex::new(Histogram::new(DURATION_BUCKETS)),
            state: Mutex::new(HashMap::new()),
            state_cache: Arc::new(StateCache::new(DEFAULT_STATE_CACHE_BYTES)),
        }
    }
}

impl ExecutorMetrics {
    /// Records the state bytes a task of `job`'s batch `batch` wrote: a newer batch
    /// replaces the figure, another task of the same batch adds to it.
    pub fn record_state(&self, job: &str, batch: i64, bytes: u64) {
        let mut state = self.state.lock().expect("state lock");
        let entry = state.entry(job.to_string()).or_insert((batch, 0));
        match batch.cmp(&entry.0) {
            std::cmp::Ordering::Greater => *entry = (batch, bytes),
            std::cmp::Ordering::Equal => entry.1 += bytes,
            std::cmp::Ordering::Less => {}
        }
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# TYPE sluice_executor_running_tasks gauge\nsluice_executor_running_tasks {}",
            self.running.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# TYPE sluice_executor_registered gauge\nsluice_executor_registered {}",
            u8::from(self.registered.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "# TYPE sluice_executor_tasks_total counter");
        let _ = writeln!(
            out,
            "sluice_executor_tasks_total{{outcome=\"succeeded\"}} {}",
            load(&self.tasks_succeeded)
        );
        let _ = writeln!(
            out,
            "sluice_executor_tasks_total{{outcome=\"failed\"}} {}",
            load(&self.tasks_failed)
        );
        let _ = writeln!(out, "# TYPE sluice_executor_tasks_panicked_total counter\nsluice_executor_tasks_panicked_total {}", load(&self.tasks_panicked));
        let _ = writeln!(out, "# TYPE sluice_executor_records_read_total counter\nsluice_executor_records_read_total {}", load(&self.records_read));
        let _ = writeln!(out, "# TYPE sluice_executor_shuffle_memory_bytes gauge\nsluice_executor_shuffle_memory_bytes {}", load(&self.shuffle_memory_bytes));
        let _ = writeln!(out, "# TYPE sluice_executor_shuffle_spilled_bytes_total counter\nsluice_executor_shuffle_spilled_bytes_total {}", load(&self.shuffle_spilled_bytes));
        let _ = writeln!(
            out,
            "# HELP sluice_executor_state_bytes State files of this executor's tasks for the latest batch of each stateful job it ran (written or carried over).\n# TYPE sluice_executor_state_bytes gauge"
        );
        let mut state: Vec<_> = self
            .state
            .lock()
            .expect("state lock")
            .iter()
            .map(|(job, (_, bytes))| (job.clone(), *bytes))
            .collect();
        state.sort();
        for (job, bytes) in state {
            let _ = writeln!(out, "sluice_executor_state_bytes{{job=\"{job}\"}} {bytes}");
        }
        let (hits, misses) = self.state_cache.hits_and_misses();
        let _ = writeln!(out, "# HELP sluice_executor_state_cache_bytes Decoded state files kept in memory for the next batch.\n# TYPE sluice_executor_state_cache_bytes gauge\nsluice_executor_state_cache_bytes {}", self.state_cache.bytes());
        let _ = writeln!(out, "# HELP sluice_executor_state_cache_reads_total State files read from memory (hit) or storage (miss).\n# TYPE sluice_executor_state_cache_reads_total counter\nsluice_executor_state_cache_reads_total{{outcome=\"hit\"}} {hits}\nsluice_executor_state_cache_reads_total{{outcome=\"miss\"}} {misses}");
        let _ = writeln!(
            out,
            "# TYPE sluice_executor_task_duration_seconds histogram"
        );
        self.task_seconds.lock().expect("histogram lock").render(
            &mut out,
            "sluice_executor_task_duration_seconds",
            "",
        );
        out
    }
}

/// Routes: `/healthz`, `/readyz`, `/metrics`.
pub fn handler(metrics: Arc<ExecutorMetrics>) -> Handler {
    Arc::new(move |path| match path {
        "/healthz" => HttpResponse::text(200, "ok\n"),
        "/readyz" if metrics.registered.load(Ordering::Relaxed) => {
            HttpResponse::text(200, "registered\n")
        }
        "/readyz" => HttpResponse::text(503, "not registered with a driver\n"),
        "/metrics" => HttpResponse::metrics(metrics.render()),
        _ => HttpResponse::not_found(),
    })
}
