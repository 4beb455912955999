//! Event time: a source's watermark, and the job's stateful settings over it (windows,
//! sessions, deduplication).
//!
//! The watermark sits beside the source it reads (`source.watermark`), so each source of
//! a job has its own; windows, sessions and deduplication are the job's (`window:`,
//! `session:`, `dedup:`, or a `tumble()`/`hop()`/`session()` in the SQL). [`EventTime`]
//! is the one view of both that decoding, planning and state read.

use serde::{Deserialize, Serialize};

use super::source::SourceSpec;
use super::TIMESTAMP_COLUMN;
use crate::durations::{duration_ms, positive_ms};
use crate::error::{Error, Result};

/// `source.watermark`: which column holds a record's event time, and how late a record
/// may come. The watermark is the highest event time seen (the minimum over partitions
/// that have data) less `delay`; records older than it are late.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// A `timestamp_ms` or `timestamp_us` column of the schema, or `_timestamp` (the Kafka
    /// record's timestamp).
    pub column: String,
    /// Allowed lateness, e.g. `30s`.
    pub delay: String,
    /// What windows and deduplication do with late records: drop them (counted), or also
    /// write them to the dead-letter table.
    #[serde(default, skip_serializing_if = "LateRecords::is_drop")]
    pub late: LateRecords,
    /// A partition without new records for this long (processing time, e.g. `1m`) stops
    /// holding the watermark back until it gets records again, which may then be late.
    /// Unset: every partition that had records counts for ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
    /// With `idle_timeout`: when every partition is idle, the watermark follows processing
    /// time less this bound (e.g. `10s`), so open windows close even though nothing
    /// arrives. Trades exactness for freshness: a record that comes later with an older
    /// event time is late. Unset: an idle stream's watermark stays where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advance_when_idle: Option<String>,
}

/// `source.watermark.late`: where the late records of a stateful job go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LateRecords {
    /// Dropped and counted (`late_records`).
    #[default]
    Drop,
    /// Dropped, counted, and written to the dead-letter table with the reason.
    DeadLetter,
}

impl LateRecords {
    fn is_drop(&self) -> bool {
        *self == LateRecords::Drop
    }
}

impl WatermarkSpec {
    /// The allowed lateness in milliseconds.
    pub fn delay_ms(&self) -> Result<i64> {
        duration_ms("source.watermark.delay", &self.delay, "30s, 5m")
    }

    /// `idle_timeout` in milliseconds; `None` when unset.
    pub fn idle_timeout_ms(&self) -> Result<Option<i64>> {
        self.idle_timeout
            .as_deref()
            .map(|t| positive_ms("source.watermark.idle_timeout", t))
            .transpose()
    }

    /// `advance_when_idle` in milliseconds; `None` when unset.
    pub fn advance_when_idle_ms(&self) -> Result<Option<i64>> {
        self.advance_when_idle
            .as_deref()
            .map(|t| duration_ms("source.watermark.advance_when_idle", t, "10s, 1m"))
            .transpose()
    }

    /// Checks the column and the durations against the source.
    pub(super) fn validate(&self, source: &SourceSpec) -> Result<()> {
        self.delay_ms()?;
        let idle_timeout = self.idle_timeout_ms()?;
        if self.advance_when_idle_ms()?.is_some() && idle_timeout.is_none() {
            return Err(Error::spec(
                "source.watermark.advance_when_idle",
                "needs source.watermark.idle_timeout (which says when a partition is idle)",
            ));
        }
        if self.column == TIMESTAMP_COLUMN {
            return Ok(());
        }
        let field = source
            .kafka
            .schema
            .iter()
            .find(|f| f.name == self.column)
            .ok_or_else(|| {
                Error::spec(
                    "source.watermark.column",
                    format!(
                        "{:?} is not a column of source.kafka.schema (nor {TIMESTAMP_COLUMN})",
                        self.column
                    ),
                )
            })?;
        match field.data_type.as_str() {
            "timestamp_ms" | "timestamp_us" | "timestamp" => Ok(()),
            other => Err(Error::spec(
                "source.watermark.column",
                format!(
                    "{:?} is of type {other}; an event-time column must be timestamp_ms or timestamp_us",
                    self.column
                ),
            )),
        }
    }
}

/// `window:`: windows of `size` on the watermark's event-time column, tumbling, or sliding
/// every `slide` (a record then belongs to `size / slide` windows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The window length, e.g. `1m`.
    pub size: String,
    /// Sliding windows: how far each window starts after the previous one, e.g. `1m` for
    /// a 5-minute window every minute; it must divide `size`. Absent: tumbling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slide: Option<String>,
}

impl WindowSpec {
    /// The window length in milliseconds.
    pub fn size_ms(&self) -> Result<i64> {
        positive_ms("window.size", &self.size)
    }

    /// How far consecutive windows start apart, in milliseconds (the size when tumbling).
    pub fn slide_ms(&self) -> Result<i64> {
        let size = self.size_ms()?;
        let Some(slide) = &self.slide else {
            return Ok(size);
        };
        let slide = positive_ms("window.slide", slide)?;
        if slide > size || size % slide != 0 {
            return Err(Error::spec(
                "window.slide",
                format!("must divide the window size ({})", self.size),
            ));
        }
        Ok(slide)
    }
}

/// `session:`: session windows of each `key`, closed by `gap` without records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSpec {
    /// How long without a record of its key ends a session, e.g. `30s`.
    pub gap: String,
    /// The columns a session belongs to, e.g. `[user_id]`; empty: one session stream for
    /// all records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
}

impl SessionSpec {
    /// The gap in milliseconds.
    pub fn gap_ms(&self) -> Result<i64> {
        positive_ms("session.gap", &self.gap)
    }
}

/// `dedup:`: only the first record of each `key` reaches the query. A key is remembered
/// until the watermark passes its first record's event time plus `within`; records older
/// than the watermark are late (dropped and counted), because their key may already be
/// forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupSpec {
    /// The columns that identify a record, e.g. `[order_id]`.
    pub key: Vec<String>,
    /// How much longer than the watermark's delay a key is remembered, e.g. `10m` when a
    /// producer's retries carry new event times (default `0s`: duplicates carry the same
    /// event time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
}

/// The hidden column of a deduplicated source that marks rows of keys seen in earlier
/// batches (the job's state); the query never sees it.
pub const SEEN_COLUMN: &str = "_sluice_seen";

impl DedupSpec {
    /// How long after its event time a key is remembered beyond the watermark, in ms.
    pub fn within_ms(&self) -> Result<i64> {
        match &self.within {
            Some(within) => duration_ms("dedup.within", within, "10m"),
            None => Ok(0),
        }
    }
}

/// A source's records as the job's stateful operators see them: the source's watermark
/// and the job's windows, sessions and deduplication. `EventTime::default()` is a
/// stateless source without event time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventTime<'a> {
    pub watermark: Option<&'a WatermarkSpec>,
    pub window: Option<&'a WindowSpec>,
    pub session: Option<&'a SessionSpec>,
    pub dedup: Option<&'a DedupSpec>,
}

impl EventTime<'_> {
    /// Whether batches hand state to the next (windows, sessions or deduplication).
    pub fn is_stateful(&self) -> bool {
        self.is_windowed() || self.dedup.is_some()
    }

    /// Whether the source's table has `window_start` and `window_end` (fixed or session
    /// windows), whose rows are written once the watermark passes `window_end`.
    pub fn is_windowed(&self) -> bool {
        self.window.is_some() || self.session.is_some()
    }

    /// Whether decoding gives each record its fixed windows (`window_start`,
    /// `window_end`, a row per sliding window). A deduplicated stream gets them after the
    /// deduplication instead, in the query's view, so a record enters each of its windows
    /// once and only as its key's first record.
    pub fn windows_at_decode(&self) -> bool {
        self.window.is_some() && self.dedup.is_none()
    }

    /// Whether late records go to the dead-letter table.
    pub fn dead_letters_late_records(&self) -> bool {
        self.watermark
            .is_some_and(|w| w.late == LateRecords::DeadLetter)
    }

    /// Checks the stateful settings against the source they apply to.
    pub(super) fn validate(&self, source: &SourceSpec) -> Result<()> {
        if let Some(watermark) = self.watermark {
            watermark.validate(source)?;
            if watermark.late == LateRecords::DeadLetter && !self.is_stateful() {
                return Err(Error::spec(
                    "source.watermark.late",
                    "only windows and deduplication drop late records; without them late records are counted and kept",
                ));
            }
        }
        if let Some(window) = self.window {
            window.slide_ms()?;
            if self.watermark.is_none() {
                return Err(Error::spec(
                    "window",
                    "windows need source.watermark (the event-time column and the allowed lateness)",
                ));
            }
        }
        if let Some(dedup) = self.dedup {
            self.validate_dedup(dedup, source)?;
        }
        if let Some(session) = self.session {
            self.validate_session(session, source)?;
        }
        Ok(())
    }

    fn validate_dedup(&self, dedup: &DedupSpec, source: &SourceSpec) -> Result<()> {
        dedup.within_ms()?;
        if self.watermark.is_none() {
            return Err(Error::spec(
                "dedup",
                "deduplication needs source.watermark (keys are forgotten as the watermark passes them)",
            ));
        }
        if dedup.key.is_empty() {
            return Err(Error::spec("dedup.key", "names no column; e.g. [order_id]"));
        }
        check_key_columns("dedup.key", &dedup.key, source)
    }

    fn validate_session(&self, session: &SessionSpec, source: &SourceSpec) -> Result<()> {
        session.gap_ms()?;
        if self.watermark.is_none() {
            return Err(Error::spec(
                "session",
                "session windows need source.watermark (the event-time column and the allowed lateness)",
            ));
        }
        if self.window.is_some() || self.dedup.is_some() {
            return Err(Error::spec(
                "session",
                "cannot be combined with window or dedup yet",
            ));
        }
        check_key_columns("session.key", &session.key, source)
    }
}

/// Fails naming `field` when a column of `key` is not a column of `source`.
fn check_key_columns(field: &str, key: &[String], source: &SourceSpec) -> Result<()> {
    match key.iter().find(|column| !source.has_column(column)) {
        Some(column) => Err(Error::spec(
            field,
            format!("{column:?} is not a column of the source"),
        )),
        None => Ok(()),
    }
}
