//! How a batch is cut into tasks and shuffled (`parallelism:`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default number of records a single task reads at most.
pub const DEFAULT_MAX_RECORDS_PER_TASK: u64 = 500_000;
/// Default number of shuffle partitions (used once the plan repartitions).
pub const DEFAULT_SHUFFLE_PARTITIONS: u32 = 8;

/// How a batch is cut into tasks and shuffled (`parallelism:`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParallelismSpec {
    #[serde(default = "default_shuffle_partitions")]
    pub shuffle_partitions: u32,
    #[serde(default = "default_max_records_per_task")]
    pub max_records_per_task: u64,
    /// Small ranges of a batch are packed into one task until it holds this many offsets
    /// (never more than `max_records_per_task`): fewer tasks and data files per small batch.
    #[serde(default = "default_min_records_per_task")]
    pub min_records_per_task: u64,
    /// A large batch's ranges are packed into at most this many tasks per task slot of
    /// the cluster's executors, of about equal offsets (more only where
    /// `max_records_per_task` needs them): every task costs a round trip, a plan, shuffle
    /// outputs and a data file, so one wave of tasks that keeps every slot busy is the
    /// cheapest way through a batch.
    #[serde(default = "default_tasks_per_slot")]
    pub tasks_per_slot: u32,
    /// A joined static table smaller than this is sent whole to every task instead of
    /// being shuffled.
    #[serde(default = "default_broadcast_threshold_bytes")]
    pub broadcast_threshold_bytes: u64,
}

impl Default for ParallelismSpec {
    fn default() -> Self {
        ParallelismSpec {
            shuffle_partitions: DEFAULT_SHUFFLE_PARTITIONS,
            max_records_per_task: DEFAULT_MAX_RECORDS_PER_TASK,
            min_records_per_task: DEFAULT_MIN_RECORDS_PER_TASK,
            tasks_per_slot: DEFAULT_TASKS_PER_SLOT,
            broadcast_threshold_bytes: DEFAULT_BROADCAST_THRESHOLD_BYTES,
        }
    }
}

/// Default size under which a joined static table is broadcast.
pub const DEFAULT_BROADCAST_THRESHOLD_BYTES: u64 = 10 << 20;

fn default_broadcast_threshold_bytes() -> u64 {
    DEFAULT_BROADCAST_THRESHOLD_BYTES
}

fn default_shuffle_partitions() -> u32 {
    DEFAULT_SHUFFLE_PARTITIONS
}

/// Default offsets below which ranges are packed together into one task.
pub const DEFAULT_MIN_RECORDS_PER_TASK: u64 = 5_000;

fn default_min_records_per_task() -> u64 {
    DEFAULT_MIN_RECORDS_PER_TASK
}

/// Default tasks per task slot a batch's ranges are packed into.
pub const DEFAULT_TASKS_PER_SLOT: u32 = 1;

fn default_tasks_per_slot() -> u32 {
    DEFAULT_TASKS_PER_SLOT
}

fn default_max_records_per_task() -> u64 {
    DEFAULT_MAX_RECORDS_PER_TASK
}

impl ParallelismSpec {
    /// Checks that every count is above zero.
    pub(super) fn validate(&self) -> Result<()> {
        if self.tasks_per_slot == 0 {
            return Err(Error::spec(
                "parallelism.tasks_per_slot",
                "must be above zero",
            ));
        }
        if self.max_records_per_task == 0 {
            return Err(Error::spec(
                "parallelism.max_records_per_task",
                "must be above zero",
            ));
        }
        if self.shuffle_partitions == 0 {
            return Err(Error::spec(
                "parallelism.shuffle_partitions",
                "must be above zero",
            ));
        }
        Ok(())
    }
}
