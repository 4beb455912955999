//! Sources behind one contract: what the driver asks of every kind of source a job reads
//! (see docs/architecture.md, "Sources"). Kafka is the first kind (`kafka`).
//!
//! A source lists what it holds now (its [`Source::Available`]), gives a new job its
//! starting [`SourcePosition`], refuses a checkpointed position it no longer holds, and
//! cuts what is new after a position into a batch's [`SourceRead`]; the planner cuts that
//! into tasks' splits, and an executor's reader of the same kind reads them into Arrow
//! batches (`executor/src/source/`). Positions and reads are plain data, logged and
//! checkpointed by the batch protocol whatever the kind.

pub mod kafka;

use async_trait::async_trait;

use crate::error::Result;
use crate::planner;
use crate::protocol::{BatchPlan, Checkpoint, SourcePosition, SourceRead, WatermarkRule};

/// A listing of what a source holds, running on a blocking thread.
pub type Lookup<A> = tokio::task::JoinHandle<Result<A>>;

/// What the driver needs of a source of a job. Cheap to clone: the batch planned while
/// another commits holds its own.
#[async_trait]
pub trait Source: Clone + Send + Sync + 'static {
    /// What the source holds now (Kafka: each partition's earliest and next offset).
    type Available: Clone + Send + Sync + 'static;

    /// The source's name in the spec: its table in the SQL, its key in the checkpoint.
    fn name(&self) -> &str;

    /// Starts listing what the source holds now, off the async threads.
    fn start_lookup(&self) -> Result<Lookup<Self::Available>>;

    /// Where a job without a checkpoint starts reading, within `available`.
    async fn start(&self, available: &Self::Available) -> Result<SourcePosition>;

    /// Fails when `position` is beyond what the source holds (its log was re-created), so
    /// that no record after it is silently never read.
    fn check(&self, position: &SourcePosition, available: &Self::Available) -> Result<()>;

    /// What the next batch reads after `position`, up to `available` capped by `limit`
    /// (the ends fixed at an `available_now` job's first batch); `None` when nothing is
    /// new.
    fn next_read(
        &self,
        position: &SourcePosition,
        available: &Self::Available,
        limit: Option<&Self::Available>,
    ) -> Option<SourceRead>;

    /// Drops connections after the source failed, so that the next lookup connects anew.
    fn reset(&self);
}

/// The batch after `checkpoint` that reads what is new of `source` (see
/// [`Source::next_read`]), under the watermark `rule` gives at `now_ms`; `None` when
/// nothing is new.
pub fn plan_after<S: Source>(
    source: &S,
    checkpoint: &Checkpoint,
    available: &S::Available,
    limit: Option<&S::Available>,
    rule: Option<&WatermarkRule>,
    now_ms: i64,
) -> Option<BatchPlan> {
    let position = &checkpoint.sources.get(source.name())?.position;
    let read = source.next_read(position, available, limit)?;
    let watermark_ms = planner::batch_watermark(checkpoint, rule, now_ms);
    let reads = [(source.name().to_string(), read)].into();
    Some(checkpoint.next_plan(reads, watermark_ms, now_ms))
}
