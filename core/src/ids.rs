//! The ids that travel between driver, executors and stores, as types of their own so
//! that a batch number is never taken for an offset or a term, nor a job for an executor.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Identifies a job: its name as given in the spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn new(name: impl Into<String>) -> JobId {
        JobId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for JobId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for JobId {
    fn from(name: &str) -> JobId {
        JobId::new(name)
    }
}

impl From<String> for JobId {
    fn from(name: String) -> JobId {
        JobId(name)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

impl AsRef<str> for JobId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for JobId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for JobId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// Sequence number of a micro-batch within a job, starting at 0.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct BatchId(i64);

impl BatchId {
    /// A job's first batch.
    pub const FIRST: BatchId = BatchId(0);
    /// What a checkpoint records before the first batch is committed.
    pub const BEFORE_FIRST: BatchId = BatchId(-1);

    pub const fn new(n: i64) -> BatchId {
        BatchId(n)
    }

    /// The number, as the protocol and the stores carry it.
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The batch after this one.
    pub const fn next(self) -> BatchId {
        BatchId(self.0 + 1)
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BatchId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<BatchId, Self::Err> {
        s.parse().map(BatchId)
    }
}

/// Identifies an executor: `--id`, or generated at start.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExecutorId(String);

impl ExecutorId {
    pub fn new(id: impl Into<String>) -> ExecutorId {
        ExecutorId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ExecutorId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ExecutorId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A task's number within its stage of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TaskId(pub u32);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialize_as_their_plain_values() {
        assert_eq!(serde_json::to_string(&BatchId::new(7)).unwrap(), "7");
        assert_eq!(
            serde_json::to_string(&JobId::from("orders")).unwrap(),
            "\"orders\""
        );
        assert_eq!("12".parse::<BatchId>().unwrap().next(), BatchId::new(13));
    }
}
