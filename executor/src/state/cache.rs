//! State files' rows kept in memory between batches. A state file never changes once
//! written (each batch writes new ones beside those it carries over), so its rows can be
//! reused by every later batch that reads it on this executor, which is where the driver
//! keeps sending the same shuffle partitions. Bounded: the least recently used files are
//! dropped first, and a file larger than the whole cache is never kept; a file not here
//! is read from storage again. See docs/architecture.md, "State after the shuffle".

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;

/// Default bound of an executor's state cache.
pub const DEFAULT_STATE_CACHE_BYTES: u64 = 256 << 20;

/// Decoded state files by path, up to a number of bytes.
#[derive(Debug)]
pub struct StateCache {
    capacity: u64,
    files: Mutex<Files>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Files {
    by_path: HashMap<String, Cached>,
    bytes: u64,
    clock: u64,
}

#[derive(Debug)]
struct Cached {
    rows: Arc<Vec<RecordBatch>>,
    bytes: u64,
    last_used: u64,
}

impl StateCache {
    /// A cache holding up to `capacity` bytes of decoded rows (0 keeps nothing).
    pub fn new(capacity: u64) -> StateCache {
        StateCache {
            capacity,
            files: Mutex::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The rows of the state file at `path`, if kept.
    pub fn get(&self, path: &str) -> Option<Arc<Vec<RecordBatch>>> {
        let mut files = self.files.lock().expect("state cache lock");
        files.clock += 1;
        let now = files.clock;
        let found = files.by_path.get_mut(path).map(|cached| {
            cached.last_used = now;
            cached.rows.clone()
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `rows` as the state file at `path`, dropping the least recently used files
    /// to make room; returns them shared.
    pub fn insert(&self, path: &str, rows: Vec<RecordBatch>) -> Arc<Vec<RecordBatch>> {
        let rows = Arc::new(rows);
        let bytes: u64 = rows.iter().map(|b| b.get_array_memory_size() as u64).sum();
        if bytes > self.capacity {
            return rows;
        }
        let mut files = self.files.lock().expect("state cache lock");
        files.clock += 1;
        let now = files.clock;
        if let Some(old) = files.by_path.remove(path) {
            files.bytes -= old.bytes;
        }
        while files.bytes + bytes > self.capacity {
            let Some(oldest) = files
                .by_path
                .iter()
                .min_by_key(|(_, cached)| cached.last_used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            let dropped = files.by_path.remove(&oldest).expect("present");
            files.bytes -= dropped.bytes;
        }
        files.bytes += bytes;
        files.by_path.insert(
            path.to_string(),
            Cached {
                rows: rows.clone(),
                bytes,
                last_used: now,
            },
        );
        rows
    }

    /// Bytes of decoded rows kept.
    pub fn bytes(&self) -> u64 {
        self.files.lock().expect("state cache lock").bytes
    }

    /// Reads served from memory and from storage, since start.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<RecordBatch> {
        vec![crate::state::rule::tests::batch("window_end")]
    }

    #[test]
    fn keeps_files_up_to_its_bound_dropping_the_least_recently_used() {
        let one: u64 = rows()
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        let cache = StateCache::new(2 * one);
        cache.insert("a", rows());
        cache.insert("b", rows());
        assert!(cache.get("a").is_some(), "a used after b");
        cache.insert("c", rows());
        assert!(cache.get("b").is_none(), "b was the least recently used");
        assert!(cache.get("a").is_some() && cache.get("c").is_some());
        assert_eq!(cache.bytes(), 2 * one);
        assert_eq!(cache.hits_and_misses(), (3, 1));

        let nothing = StateCache::new(one - 1);
        assert_eq!(nothing.insert("a", rows()).len(), 1, "rows handed back");
        assert!(nothing.get("a").is_none(), "larger than the whole cache");
        assert_eq!(nothing.bytes(), 0);
    }
}
