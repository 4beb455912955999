//! The job spec (YAML or JSON) and its validation, one file per concern: [`source`] (a
//! source and the columns its table has), [`kafka`] (the Kafka source), [`event_time`]
//! (watermarks, windows, sessions, deduplication), [`sink`], [`trigger`], [`parallelism`],
//! `validate` (the checks across parts) and `layout` (the older places of settings a
//! spec may still use).
//!
//! Parsing checks everything that can be checked without talking to a service; the driver
//! then plans the SQL and reaches Kafka and the catalog before accepting a job.

pub mod event_time;
pub mod kafka;
mod layout;
pub mod parallelism;
pub mod sink;
pub mod source;
pub mod trigger;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use event_time::*;
pub use kafka::*;
pub use parallelism::*;
pub use sink::*;
pub use source::*;
pub use trigger::*;
pub use validate::MAX_IDENTIFIER_CHARS;

use crate::error::{Error, Result};
use crate::window_sql::SqlWindowKind;
/// The columns a windowed source gains (see [`crate::window_sql`]).
pub use crate::window_sql::{WINDOW_END_COLUMN, WINDOW_START_COLUMN};

/// A whole job: where to read, what to compute, where to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    /// The streams the job reads, by name; the SQL reads each as a table of that name. A
    /// spec's `source:` is the shorthand for one source named `source`. One source until
    /// stream–stream joins come.
    pub sources: BTreeMap<String, SourceSpec>,
    #[serde(default)]
    pub trigger: TriggerSpec,
    pub sql: String,
    /// What the query's aggregates (`GROUP BY`, `DISTINCT`, `count(*)` …) cover.
    #[serde(default, skip_serializing_if = "Aggregation::is_default")]
    pub aggregation: Aggregation,
    /// Tumbling or sliding event-time windows over the source's watermark column: the
    /// source's table gains `window_start` and `window_end`, and a window's rows are
    /// written once, when the watermark has passed its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Session windows over the watermark's column, per key: a session ends once `gap`
    /// passes without a record of its key. The source's table gains `window_start` and
    /// `window_end` (the last record's time plus the gap); a session's rows are written
    /// once, when the watermark has passed its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
    /// Deduplication: the first record per key passes, later ones with the same key are
    /// dropped for as long as the key is remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupSpec>,
    pub sink: SinkSpec,
    #[serde(default)]
    pub parallelism: ParallelismSpec,
    /// Static tables the SQL may join with the stream, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<DimensionTableSpec>,
}

/// What a query's aggregates cover (`aggregation:` in a spec).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Event-time windows or sessions: each group's row is written once, final over all
    /// its records from every batch. A query aggregating the stream without a window or
    /// session is refused at submit: its result could never be final.
    #[default]
    Windowed,
    /// Each batch on its own: one row per group per batch (summaries of each batch, or a
    /// `once` job reading everything in one batch).
    PerBatch,
}

impl Aggregation {
    /// Whether this is the default, [`Aggregation::Windowed`].
    pub fn is_default(&self) -> bool {
        *self == Aggregation::Windowed
    }
}

/// A static table (e.g. a dimension) visible to the job's SQL under `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DimensionTableSpec {
    pub name: String,
    /// Parquet files: one file or a directory of them (a path or `file://` URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<String>,
    /// An Iceberg table, read as of its current snapshot when the job is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iceberg: Option<IcebergTableSpec>,
}

/// An Iceberg table to read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergTableSpec {
    pub catalog: CatalogSpec,
    pub namespace: String,
    pub table: String,
}

impl JobSpec {
    /// The job's id: its name.
    pub fn job_id(&self) -> crate::JobId {
        crate::JobId::new(self.name.clone())
    }

    /// Parses a spec from YAML (JSON is valid YAML) and validates it. Settings in the
    /// places older specs used (see `layout`) are read where they are.
    pub fn parse(text: &str) -> Result<JobSpec> {
        let located = |e: serde_yaml_ng::Error| {
            let field = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "spec".into());
            Error::spec(field, e.to_string())
        };
        let mut value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(located)?;
        // A spec in today's layout is read from its text, so errors keep their line.
        let mut spec: JobSpec = if layout::to_current(&mut value)? {
            serde_yaml_ng::from_value(value).map_err(located)?
        } else {
            serde_yaml_ng::from_str(text).map_err(located)?
        };
        spec.resolve_sql_window()?;
        let partition_by = &mut spec.sink.iceberg.partition_by;
        *partition_by = crate::partition::rejoin(partition_by);
        spec.validate()?;
        Ok(spec)
    }

    /// The name of the job's one source: the table its SQL reads.
    pub fn source_name(&self) -> &str {
        self.sources
            .keys()
            .next()
            .map(String::as_str)
            .expect("a parsed spec has one source")
    }

    /// The job's one source.
    pub fn source(&self) -> &SourceSpec {
        self.sources
            .values()
            .next()
            .expect("a parsed spec has one source")
    }

    /// The job's one source, to change (tests, and specs built in code).
    pub fn source_mut(&mut self) -> &mut SourceSpec {
        self.sources
            .values_mut()
            .next()
            .expect("a parsed spec has one source")
    }

    /// The event time the job's source is processed under: its watermark and the job's
    /// windows, sessions and deduplication.
    pub fn event_time(&self) -> EventTime<'_> {
        EventTime {
            watermark: self
                .sources
                .values()
                .next()
                .and_then(|s| s.watermark.as_ref()),
            window: self.window.as_ref(),
            session: self.session.as_ref(),
            dedup: self.dedup.as_ref(),
        }
    }

    /// Whether the job writes a dead-letter table (malformed or late records).
    pub fn writes_dead_letters(&self) -> bool {
        self.source().kafka.on_malformed == OnMalformed::DeadLetter
            || self.event_time().dead_letters_late_records()
    }

    /// Turns a `tumble()`/`hop()` the SQL groups by into the job's `window` (a
    /// `session()` into its `session`) and the window's columns (see
    /// [`crate::window_sql`]); a parsed spec holds no window calls.
    fn resolve_sql_window(&mut self) -> Result<()> {
        let found = crate::window_sql::extract_window(&self.sql)
            .map_err(|message| Error::spec("sql", message))?;
        let Some((sql, window)) = found else {
            return Ok(());
        };
        if self.event_time().is_windowed() {
            return Err(Error::spec(
                "sql",
                "groups by a window and window or session is set too; keep one",
            ));
        }
        match self.event_time().watermark {
            Some(watermark) if watermark.column == window.column => {}
            Some(watermark) => {
                return Err(Error::spec(
                    "sql",
                    format!(
                        "the window is over {:?} but the watermark over {:?}; windows are over the watermark's event-time column",
                        window.column, watermark.column
                    ),
                ))
            }
            None => {
                return Err(Error::spec(
                    "sql",
                    "windows need source.watermark (the event-time column and the allowed lateness)",
                ))
            }
        }
        match window.kind {
            SqlWindowKind::Fixed { size_ms, slide_ms } => {
                self.window = Some(WindowSpec {
                    size: format!("{size_ms}ms"),
                    slide: (slide_ms != size_ms).then(|| format!("{slide_ms}ms")),
                })
            }
            SqlWindowKind::Session { gap_ms, key } => {
                self.session = Some(SessionSpec {
                    gap: format!("{gap_ms}ms"),
                    key,
                })
            }
        }
        self.sql = sql;
        Ok(())
    }

    /// The spec as JSON, for executors and the checkpoint store.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a job spec always serializes")
    }

    /// The resolved trigger.
    pub fn trigger(&self) -> Trigger {
        self.trigger
            .resolve()
            .expect("trigger was validated at parse time")
    }
}
