//! The records of the commit protocol, whatever the job's sources: the checkpoint (what a
//! job has durably done), a batch's plan (what it reads, written ahead to the offset log),
//! and the watermark computed from them. The batch protocol (`crate::batch`) moves them
//! on; the checkpoint store (`crate::checkpoint`) keeps them. See docs/architecture.md,
//! "The checkpoint".

mod checkpoint;
mod plan;
mod watermark;

pub use checkpoint::{record_event_time, Checkpoint, EventTimes, SourceCheckpoint, SourcePosition};
pub use plan::{BatchPlan, SourceRead};
pub use watermark::{WatermarkRule, WatermarkView};
