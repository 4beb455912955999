//! Reading a task's splits of a job's source into Arrow batches: the executor's side of
//! the source contract (docs/architecture.md, "Sources"). Whatever the kind, a reader
//! hands the task [`TaskInput`]: the decoded record batches, how many records were read,
//! skipped or lost, the highest event time per split, and the dead letters. Kafka is the
//! first kind (`kafka`: pooled consumers reading a task's offset ranges); `event_time`
//! computes the event times and late counts of what any reader read.

pub(crate) mod event_time;
pub(crate) mod kafka;

pub(crate) use kafka::{ConsumerPool, EventTime, TaskInput};
