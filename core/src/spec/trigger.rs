//! When a job's batches run (`trigger:`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// When batches run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// Run a batch every interval, e.g. `1s`, `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processing_time: Option<String>,
    /// Run one batch with what is available, then finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub once: Option<bool>,
    /// Run batches until everything available at start is processed, then finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_now: Option<bool>,
}

/// The trigger, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    ProcessingTime(Duration),
    Once,
    AvailableNow,
}

/// Default trigger interval when the spec names none.
pub const DEFAULT_TRIGGER_INTERVAL: Duration = Duration::from_secs(1);

impl TriggerSpec {
    /// Resolves the trigger; exactly one kind may be given.
    pub fn resolve(&self) -> Result<Trigger> {
        let mut chosen = Vec::new();
        if let Some(interval) = &self.processing_time {
            let interval = humantime::parse_duration(interval).map_err(|e| {
                Error::spec("trigger.processing_time", format!("{interval:?}: {e}"))
            })?;
            if interval.is_zero() {
                return Err(Error::spec("trigger.processing_time", "must be above zero"));
            }
            chosen.push(Trigger::ProcessingTime(interval));
        }
        if self.once == Some(true) {
            chosen.push(Trigger::Once);
        }
        if self.available_now == Some(true) {
            chosen.push(Trigger::AvailableNow);
        }
        match chosen.as_slice() {
            [] => Ok(Trigger::ProcessingTime(DEFAULT_TRIGGER_INTERVAL)),
            [one] => Ok(*one),
            _ => Err(Error::spec(
                "trigger",
                "give exactly one of processing_time, once, available_now",
            )),
        }
    }
}
