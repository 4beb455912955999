//! The one description of a job's stateful operator.

use sluice_core::spec::EventTime;
use sluice_core::Result;

/// What a stateful job keeps between batches and until when a row stays state. Derived
/// once from the spec ([`StatefulOperator::of`]); the executor's state rule, the deltas of
/// its state files and the stages that keep it after a shuffle all read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatefulOperator {
    /// Fixed windows (tumbling or sliding): the rows, or partial aggregates, of open
    /// windows; a row stays state until the watermark reaches its window's end.
    Windows,
    /// Deduplication: the remembered keys; a key stays state until the watermark passes
    /// its first record's `event_time` plus `within_ms`.
    Dedup {
        key: Vec<String>,
        event_time: String,
        within_ms: i64,
    },
    /// Session windows: the rows of open sessions of each `key`; a session stays open until
    /// the watermark reaches its last record's `event_time` plus `gap_ms`.
    Sessions {
        key: Vec<String>,
        event_time: String,
        gap_ms: i64,
    },
}

impl StatefulOperator {
    /// The operator of a job processed under `event_time`; `None` for a stateless job.
    /// Windows over deduplicated records are deduplication's: records below the watermark
    /// are late (their key may be forgotten), which includes every record whose window was
    /// written; the windows' partials after the shuffle keep the windows' rule
    /// ([`crate::ShuffleStateStage::operator`]).
    pub fn of(event_time: EventTime) -> Result<Option<StatefulOperator>> {
        let Some(watermark) = event_time.watermark else {
            return Ok(None);
        };
        if let Some(dedup) = event_time.dedup {
            return Ok(Some(StatefulOperator::Dedup {
                key: dedup.key.clone(),
                event_time: watermark.column.clone(),
                within_ms: dedup.within_ms()?,
            }));
        }
        if let Some(session) = event_time.session {
            return Ok(Some(StatefulOperator::Sessions {
                key: session.key.clone(),
                event_time: watermark.column.clone(),
                gap_ms: session.gap_ms()?,
            }));
        }
        Ok(event_time.window.map(|_| StatefulOperator::Windows))
    }

    /// Whether this is deduplication.
    pub fn is_dedup(&self) -> bool {
        matches!(self, StatefulOperator::Dedup { .. })
    }
}
