//! The job spec (YAML or JSON) and its validation.
//!
//! Parsing checks everything that can be checked without talking to a service; the driver
//! then plans the SQL and reaches Kafka and the catalog before accepting a job.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::avro::AvroSpec;
use crate::compaction::CompactionSpec;
use crate::durations::{duration_ms, positive_ms};
use crate::error::{Error, Result};
use crate::window_sql::SqlWindowKind;
/// The columns a windowed source gains (see [`crate::window_sql`]).
pub use crate::window_sql::{WINDOW_END_COLUMN, WINDOW_START_COLUMN};

/// Default number of records a single task reads at most.
pub const DEFAULT_MAX_RECORDS_PER_TASK: u64 = 500_000;
/// Default number of shuffle partitions (used once the plan repartitions).
pub const DEFAULT_SHUFFLE_PARTITIONS: u32 = 8;
/// Catalog name used in the SQL catalog, the same as pyiceberg's default.
pub const DEFAULT_CATALOG_NAME: &str = "default";

/// A whole job: where to read, what to compute, where to write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub source: SourceSpec,
    #[serde(default)]
    pub trigger: TriggerSpec,
    pub sql: String,
    /// What the query's aggregates (`GROUP BY`, `DISTINCT`, `count(*)` …) cover.
    #[serde(default, skip_serializing_if = "Aggregation::is_default")]
    pub aggregation: Aggregation,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub kafka: KafkaSourceSpec,
}

/// The Kafka source of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceSpec {
    pub bootstrap_servers: String,
    /// Topics read by name (may be empty with a `topic_pattern`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Topics read by a regular expression their whole name must match, e.g.
    /// `orders\..*`; topics created later that match are read from their beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_pattern: Option<String>,
    #[serde(default)]
    pub starting_offsets: StartingOffsets,
    /// Upper bound on records per batch over all partitions.
    #[serde(default)]
    pub max_offsets_per_trigger: Option<u64>,
    #[serde(default)]
    pub format: RecordFormat,
    /// `format: avro`: where the schemas come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avro: Option<AvroSpec>,
    #[serde(default)]
    pub schema: Vec<FieldSpec>,
    #[serde(default)]
    pub on_malformed: OnMalformed,
    /// Fail the job when offsets to process were deleted from Kafka (retention); when
    /// false, skip ahead and record the gap in the batch's progress.
    #[serde(default = "default_true")]
    pub fail_on_data_loss: bool,
    /// Larger records are malformed (default [`DEFAULT_MAX_RECORD_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_record_bytes: Option<u64>,
    /// JSON records nested deeper than this (objects and arrays) are malformed (default
    /// [`DEFAULT_MAX_NESTING_DEPTH`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_nesting_depth: Option<u32>,
    /// librdkafka client properties for every consumer the job creates (security,
    /// client id, fetch tuning, …). Secret values are references: `${env:NAME}` or
    /// `${file:/path}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// Event time and allowed lateness: the job tracks a watermark.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
    /// Tumbling event-time windows over the watermark's column: the `source` table gains
    /// `window_start` and `window_end`, and a window's rows are written once, when the
    /// watermark has passed its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowSpec>,
    /// Session windows over the watermark's column, per key: a session ends once `gap`
    /// passes without a record of its key. The `source` table gains `window_start` and
    /// `window_end` (the last record's time plus the gap); a session's rows are written
    /// once, when the watermark has passed its end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionSpec>,
    /// Deduplication: the first record per key passes, later ones with the same key are
    /// dropped for as long as the key is remembered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup: Option<DedupSpec>,
}

/// `source.kafka.dedup`: only the first record of each `key` reaches the query. A key is
/// remembered until the watermark passes its first record's event time plus `within`;
/// records older than the watermark are late (dropped and counted), because their key may
/// already be forgotten.
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
            Some(within) => duration_ms("source.kafka.dedup.within", within, "10m"),
            None => Ok(0),
        }
    }

    /// Checks the key against the source and the options it needs.
    fn validate(&self, kafka: &KafkaSourceSpec) -> Result<()> {
        self.within_ms()?;
        if kafka.watermark.is_none() {
            return Err(Error::spec(
                "source.kafka.dedup",
                "deduplication needs source.kafka.watermark (keys are forgotten as the watermark passes them)",
            ));
        }
        if self.key.is_empty() {
            return Err(Error::spec(
                "source.kafka.dedup.key",
                "names no column; e.g. [order_id]",
            ));
        }
        for column in &self.key {
            if !is_source_column(kafka, column) {
                return Err(Error::spec(
                    "source.kafka.dedup.key",
                    format!("{column:?} is not a column of the source"),
                ));
            }
        }
        Ok(())
    }
}

/// `source.kafka.window`: windows of `size` on the watermark's event-time column,
/// tumbling, or sliding every `slide` (a record then belongs to `size / slide` windows).
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

/// `source.kafka.session`: session windows of each `key`, closed by `gap` without records.
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
        positive_ms("source.kafka.session.gap", &self.gap)
    }

    /// Checks the gap, the key and the options sessions need.
    fn validate(&self, kafka: &KafkaSourceSpec) -> Result<()> {
        self.gap_ms()?;
        if kafka.watermark.is_none() {
            return Err(Error::spec(
                "source.kafka.session",
                "session windows need source.kafka.watermark (the event-time column and the allowed lateness)",
            ));
        }
        if kafka.window.is_some() || kafka.dedup.is_some() {
            return Err(Error::spec(
                "source.kafka.session",
                "cannot be combined with source.kafka.window or source.kafka.dedup yet",
            ));
        }
        for column in &self.key {
            if !is_source_column(kafka, column) {
                return Err(Error::spec(
                    "source.kafka.session.key",
                    format!("{column:?} is not a column of the source"),
                ));
            }
        }
        Ok(())
    }
}

/// Whether `column` is a decoded or metadata column of the source.
fn is_source_column(kafka: &KafkaSourceSpec, column: &str) -> bool {
    kafka.schema.iter().any(|f| f.name == column) || METADATA_COLUMNS.contains(&column)
}

/// Client properties Sluice sets itself: exact range reads depend on them.
pub const MANAGED_KAFKA_PROPERTIES: [&str; 7] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "isolation.level",
    "auto.offset.reset",
];

/// Whether a client property holds a secret (its value must be a reference).
pub fn is_secret_property(name: &str) -> bool {
    name.contains("password")
        || name.contains("secret")
        || name.ends_with(".key.pem")
        || name == "sasl.oauthbearer.config"
}

/// Checks `source.kafka.properties` before any client sees them: no property Sluice
/// manages, secrets only as references, references well formed. Whether librdkafka knows
/// a property and accepts its value is checked at submit, when the driver creates its
/// client.
fn validate_kafka_properties(properties: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in properties {
        let field = format!("source.kafka.properties.{name}");
        if MANAGED_KAFKA_PROPERTIES.contains(&name.as_str()) {
            return Err(Error::spec(
                field,
                "is set by Sluice (exact offset-range reads depend on it); bootstrap servers go in source.kafka.bootstrap_servers",
            ));
        }
        if is_secret_property(name) && !crate::secrets::is_reference(value) {
            return Err(Error::spec(
                field,
                "holds a secret: keep it out of the spec and refer to it as ${env:NAME} or ${file:/path}",
            ));
        }
        crate::secrets::check(value).map_err(|message| Error::spec(field, message))?;
    }
    Ok(())
}

impl WindowSpec {
    /// The window length in milliseconds.
    pub fn size_ms(&self) -> Result<i64> {
        positive_ms("source.kafka.window.size", &self.size)
    }

    /// How far consecutive windows start apart, in milliseconds (the size when tumbling).
    pub fn slide_ms(&self) -> Result<i64> {
        let size = self.size_ms()?;
        let Some(slide) = &self.slide else {
            return Ok(size);
        };
        let slide = positive_ms("source.kafka.window.slide", slide)?;
        if slide > size || size % slide != 0 {
            return Err(Error::spec(
                "source.kafka.window.slide",
                format!("must divide the window size ({})", self.size),
            ));
        }
        Ok(slide)
    }
}

/// `source.kafka.watermark`: which column holds a record's event time, and how late a
/// record may come. The watermark is the highest event time seen (the minimum over
/// partitions that have data) less `delay`; records older than it are late.
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

/// `source.kafka.watermark.late`: where the late records of a stateful job go.
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
        duration_ms("source.kafka.watermark.delay", &self.delay, "30s, 5m")
    }

    /// `idle_timeout` in milliseconds; `None` when unset.
    pub fn idle_timeout_ms(&self) -> Result<Option<i64>> {
        self.idle_timeout
            .as_deref()
            .map(|t| positive_ms("source.kafka.watermark.idle_timeout", t))
            .transpose()
    }

    /// `advance_when_idle` in milliseconds; `None` when unset.
    pub fn advance_when_idle_ms(&self) -> Result<Option<i64>> {
        self.advance_when_idle
            .as_deref()
            .map(|t| duration_ms("source.kafka.watermark.advance_when_idle", t, "10s, 1m"))
            .transpose()
    }

    /// Checks the column and the durations against the source.
    fn validate(&self, kafka: &KafkaSourceSpec) -> Result<()> {
        self.delay_ms()?;
        let idle_timeout = self.idle_timeout_ms()?;
        if self.advance_when_idle_ms()?.is_some() && idle_timeout.is_none() {
            return Err(Error::spec(
                "source.kafka.watermark.advance_when_idle",
                "needs source.kafka.watermark.idle_timeout (which says when a partition is idle)",
            ));
        }
        if self.column == TIMESTAMP_COLUMN {
            return Ok(());
        }
        let field = kafka
            .schema
            .iter()
            .find(|f| f.name == self.column)
            .ok_or_else(|| {
                Error::spec(
                    "source.kafka.watermark.column",
                    format!(
                        "{:?} is not a column of source.kafka.schema (nor {TIMESTAMP_COLUMN})",
                        self.column
                    ),
                )
            })?;
        match field.data_type.as_str() {
            "timestamp_ms" | "timestamp_us" | "timestamp" => Ok(()),
            other => Err(Error::spec(
                "source.kafka.watermark.column",
                format!(
                    "{:?} is of type {other}; an event-time column must be timestamp_ms or timestamp_us",
                    self.column
                ),
            )),
        }
    }
}

/// JSON nesting allowed unless the spec says otherwise (`source.kafka.max_nesting_depth`).
pub const DEFAULT_MAX_NESTING_DEPTH: u32 = 64;
/// The deepest `max_nesting_depth` a spec may ask for: deeper values would reach code
/// that recurses per level with a thread's stack.
pub const MAX_NESTING_DEPTH_LIMIT: u32 = 1024;

/// The name under which a job's SQL reads the stream.
pub const SOURCE_TABLE: &str = "source";

/// Kafka metadata columns appended to every decoded record (the `source` table's last
/// columns).
pub const TOPIC_COLUMN: &str = "_topic";
pub const PARTITION_COLUMN: &str = "_partition";
pub const OFFSET_COLUMN: &str = "_offset";
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
pub const KEY_COLUMN: &str = "_key";
/// The column holding the value's bytes for `format: raw`.
pub const RAW_VALUE_COLUMN: &str = "value";

const METADATA_COLUMNS: [&str; 5] = [
    TOPIC_COLUMN,
    PARTITION_COLUMN,
    OFFSET_COLUMN,
    TIMESTAMP_COLUMN,
    KEY_COLUMN,
];

/// Records above this size are malformed unless the spec says otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 8 << 20;

/// The topics a source reads: named ones and those matching its pattern.
#[derive(Debug, Clone)]
pub struct TopicMatcher {
    named: Vec<String>,
    pattern: Option<regex::Regex>,
}

impl TopicMatcher {
    /// Whether the source reads `topic`: named, or matched by the pattern and not one of
    /// Kafka's internal topics (`__…`).
    pub fn matches(&self, topic: &str) -> bool {
        self.named.iter().any(|t| t == topic)
            || (!topic.starts_with("__")
                && self.pattern.as_ref().is_some_and(|p| p.is_match(topic)))
    }

    /// Whether a pattern picks topics beyond the named ones.
    pub fn has_pattern(&self) -> bool {
        self.pattern.is_some()
    }

    /// The named topics.
    pub fn named(&self) -> &[String] {
        &self.named
    }
}

impl KafkaSourceSpec {
    /// The source's topics as a matcher; fails on a pattern that is not a regular
    /// expression. A pattern must match a topic's whole name.
    pub fn topic_matcher(&self) -> Result<TopicMatcher> {
        let pattern = match &self.topic_pattern {
            Some(pattern) => Some(regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                Error::spec(
                    "source.kafka.topic_pattern",
                    format!("is not a regular expression: {e}"),
                )
            })?),
            None => None,
        };
        Ok(TopicMatcher {
            named: self.topics.clone(),
            pattern,
        })
    }

    /// Whether the source reads `topic` (by name or pattern).
    pub fn reads_topic(&self, topic: &str) -> Result<bool> {
        Ok(self.topic_matcher()?.matches(topic))
    }

    /// Whether batches hand state to the next (windows, sessions or deduplication).
    pub fn is_stateful(&self) -> bool {
        self.is_windowed() || self.dedup.is_some()
    }

    /// Whether the `source` table has `window_start` and `window_end` (fixed or session
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
            .as_ref()
            .is_some_and(|w| w.late == LateRecords::DeadLetter)
    }

    /// Whether the job writes a dead-letter table (malformed or late records).
    pub fn writes_dead_letters(&self) -> bool {
        self.on_malformed == OnMalformed::DeadLetter || self.dead_letters_late_records()
    }

    /// The size above which a record is malformed.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES)
    }

    /// The nesting depth above which a JSON record is malformed.
    pub fn max_nesting_depth(&self) -> u32 {
        self.max_nesting_depth.unwrap_or(DEFAULT_MAX_NESTING_DEPTH)
    }
}

/// Where a job starts reading a partition that has no checkpoint yet.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StartingOffsets {
    #[default]
    Earliest,
    Latest,
    /// Per topic, per partition: the first offset to read. Unlisted partitions start at earliest.
    PerPartition(BTreeMap<String, BTreeMap<i32, i64>>),
    /// Every partition from its first record with a timestamp at or after this instant
    /// (ms since the epoch), as Kafka's offset-for-time lookup finds it; a partition with
    /// no such record starts at its end.
    Timestamp(i64),
}

const STARTING_OFFSETS_HELP: &str =
    "source.kafka.starting_offsets: expected earliest, latest, {timestamp: <ms since the epoch or RFC 3339 time>} or a map of topic -> partition -> offset";

/// `{timestamp: …}`: milliseconds since the epoch, or an RFC 3339 time such as
/// `2026-11-01T00:00:00Z`.
fn starting_timestamp(value: &serde_yaml_ng::Value) -> Result<i64, String> {
    if let Some(ms) = value.as_i64() {
        return Ok(ms);
    }
    let text = value
        .as_str()
        .ok_or_else(|| format!("{STARTING_OFFSETS_HELP}; bad timestamp {value:?}"))?;
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{STARTING_OFFSETS_HELP}; bad timestamp {text:?}: {e}"))?;
    let since_epoch = time
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| format!("{STARTING_OFFSETS_HELP}; timestamp {text:?} is before 1970"))?;
    i64::try_from(since_epoch.as_millis())
        .map_err(|_| format!("{STARTING_OFFSETS_HELP}; timestamp {text:?} is too large"))
}

impl StartingOffsets {
    fn from_value(value: &serde_yaml_ng::Value) -> Result<StartingOffsets, String> {
        use serde_yaml_ng::Value;
        match value {
            Value::String(s) if s == "earliest" => Ok(StartingOffsets::Earliest),
            Value::String(s) if s == "latest" => Ok(StartingOffsets::Latest),
            // A topic named `timestamp` maps to partitions; the option to a scalar.
            Value::Mapping(map)
                if map.len() == 1 && map.get("timestamp").is_some_and(|v| !v.is_mapping()) =>
            {
                starting_timestamp(&map["timestamp"]).map(StartingOffsets::Timestamp)
            }
            Value::Mapping(topics) => {
                let mut map = BTreeMap::new();
                for (topic, partitions) in topics {
                    let topic = topic.as_str().ok_or(STARTING_OFFSETS_HELP)?.to_string();
                    let partitions = partitions.as_mapping().ok_or(STARTING_OFFSETS_HELP)?;
                    let mut offsets = BTreeMap::new();
                    for (partition, offset) in partitions {
                        // Keys are numbers in YAML and strings in JSON.
                        let partition = match partition {
                            Value::Number(n) => n.as_i64(),
                            Value::String(s) => s.parse().ok(),
                            _ => None,
                        }
                        .and_then(|p| i32::try_from(p).ok())
                        .ok_or_else(|| {
                            format!(
                                "{STARTING_OFFSETS_HELP}; bad partition {partition:?} of {topic}"
                            )
                        })?;
                        let offset = offset.as_i64().ok_or_else(|| {
                            format!("{STARTING_OFFSETS_HELP}; bad offset of {topic}/{partition}")
                        })?;
                        offsets.insert(partition, offset);
                    }
                    map.insert(topic, offsets);
                }
                Ok(StartingOffsets::PerPartition(map))
            }
            other => Err(format!("{STARTING_OFFSETS_HELP}, got {other:?}")),
        }
    }
}

impl<'de> Deserialize<'de> for StartingOffsets {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = serde_yaml_ng::Value::deserialize(deserializer)?;
        StartingOffsets::from_value(&value).map_err(serde::de::Error::custom)
    }
}

impl Serialize for StartingOffsets {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            StartingOffsets::Earliest => serializer.serialize_str("earliest"),
            StartingOffsets::Latest => serializer.serialize_str("latest"),
            StartingOffsets::PerPartition(map) => map.serialize(serializer),
            StartingOffsets::Timestamp(ms) => {
                BTreeMap::from([("timestamp", ms)]).serialize(serializer)
            }
        }
    }
}

/// How record values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordFormat {
    /// One JSON object per record, decoded with the spec's schema.
    #[default]
    Json,
    /// The value's bytes as a binary column `value`.
    Raw,
    /// Avro, read with `source.kafka.avro` (a schema registry and/or a reader schema)
    /// into the columns of the spec's schema, matched by name.
    Avro,
}

/// What to do with a record that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMalformed {
    /// Fail the batch; nothing of it is committed.
    #[default]
    Fail,
    /// Drop the record and count it in the batch's progress.
    Skip,
    /// Write the record whole (bytes, error, Kafka coordinates) to the dead-letter table.
    DeadLetter,
}

/// One column of the source schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: String,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// Child fields of a `struct` column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
}

fn default_true() -> bool {
    true
}

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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    pub iceberg: IcebergSinkSpec,
}

/// The Iceberg table a job writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergSinkSpec {
    pub catalog: CatalogSpec,
    pub namespace: String,
    pub table: String,
    /// Table for `on_malformed: dead_letter` (default `{table}_dead_letter`), in the
    /// same catalog and namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_table: Option<String>,
    /// A task rolls its output into a new data file once the current one reaches this
    /// many bytes (default [`DEFAULT_TARGET_FILE_SIZE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_file_size: Option<u64>,
    /// Parquet writer settings of the data files.
    #[serde(default, skip_serializing_if = "ParquetSpec::is_default")]
    pub parquet: ParquetSpec,
    /// How a table Sluice creates is partitioned, e.g. `[day(ts), bucket(16, id),
    /// country]` (see [`crate::partition`]); an existing table keeps its own spec.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_by: Vec<String>,
    /// Compaction while streaming: small files rewritten into large ones between batches
    /// (on by default; see [`crate::compaction`]).
    #[serde(default, skip_serializing_if = "CompactionSpec::is_default")]
    pub compaction: CompactionSpec,
}

impl IcebergSinkSpec {
    /// The parsed `partition_by` fields.
    pub fn partition_fields(&self) -> Result<Vec<crate::partition::PartitionField>> {
        self.partition_by
            .iter()
            .map(|text| crate::partition::PartitionField::parse(text))
            .collect()
    }
}

/// Data files roll over at this size unless the spec says otherwise.
pub const DEFAULT_TARGET_FILE_SIZE: u64 = 128 << 20;

/// `sink.iceberg.parquet`: how data files are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSpec {
    /// `snappy` (default), `zstd`, `zstd(LEVEL)`, `gzip`, `gzip(LEVEL)`, `lz4`, `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Rows per row group at most (default: the Parquet writer's, about a million).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_group_rows: Option<u64>,
}

impl ParquetSpec {
    fn is_default(&self) -> bool {
        self == &ParquetSpec::default()
    }

    /// The codec name and optional level, validated.
    pub fn codec(&self) -> Result<(String, Option<i32>)> {
        let text = self
            .compression
            .as_deref()
            .unwrap_or("snappy")
            .to_ascii_lowercase();
        let (name, level) = match text.split_once('(') {
            Some((name, rest)) => {
                let level = rest
                    .strip_suffix(')')
                    .and_then(|l| l.trim().parse::<i32>().ok())
                    .ok_or_else(|| {
                        Error::spec(
                            "sink.iceberg.parquet.compression",
                            format!("{text:?}: the level must be a number, e.g. zstd(3)"),
                        )
                    })?;
                (name.to_string(), Some(level))
            }
            None => (text.clone(), None),
        };
        match (name.as_str(), level) {
            ("snappy" | "lz4" | "none", None) | ("zstd" | "gzip", _) => Ok((name, level)),
            _ => Err(Error::spec(
                "sink.iceberg.parquet.compression",
                format!("{text:?}: use snappy, zstd, zstd(LEVEL), gzip, gzip(LEVEL), lz4 or none"),
            )),
        }
    }
}

impl IcebergSinkSpec {
    /// The size at which a task starts a new data file.
    pub fn target_file_size(&self) -> u64 {
        self.target_file_size.unwrap_or(DEFAULT_TARGET_FILE_SIZE)
    }

    /// The dead-letter table's name.
    pub fn dead_letter_table(&self) -> String {
        self.dead_letter_table
            .clone()
            .unwrap_or_else(|| format!("{}_dead_letter", self.table))
    }
}

/// The Iceberg catalog: `type: sql` (SQLite, `uri: sqlite:///…`) or `type: rest` (an
/// Iceberg REST catalog, `uri: http(s)://…`), with the warehouse on the local file system
/// (`file:///…`) or on S3-compatible object storage (`s3://bucket/prefix`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSpec {
    #[serde(rename = "type")]
    pub catalog_type: String,
    pub uri: String,
    /// Where tables live; required for `sql`, optional for `rest` (the server's default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub warehouse: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Catalog and FileIO properties in Iceberg's names, e.g. `s3.endpoint`, `s3.region`,
    /// `s3.access-key-id`, `s3.secret-access-key`, `s3.path-style-access`, or `token` and
    /// `credential` for a REST catalog.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// The kinds of catalog Sluice opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatalogKind {
    Sql,
    Rest,
}

impl CatalogSpec {
    /// The catalog's name (pyiceberg's default when none is given).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(DEFAULT_CATALOG_NAME)
    }

    /// Checks the catalog's fields and returns its kind; `field` is where the catalog
    /// sits in the spec.
    pub fn validate(&self, field: &str) -> Result<CatalogKind> {
        let kind = match self.catalog_type.as_str() {
            "sql" => CatalogKind::Sql,
            "rest" => CatalogKind::Rest,
            other => {
                return Err(Error::spec(
                    format!("{field}.type"),
                    format!("unsupported catalog type {other:?}; supported: sql, rest"),
                ))
            }
        };
        match kind {
            CatalogKind::Sql if !self.uri.starts_with("sqlite:") => {
                return Err(Error::spec(
                    format!("{field}.uri"),
                    "expected a SQLite URI such as sqlite:///var/sluice/catalog.db",
                ))
            }
            CatalogKind::Rest
                if !self.uri.starts_with("http://") && !self.uri.starts_with("https://") =>
            {
                return Err(Error::spec(
                    format!("{field}.uri"),
                    "expected the REST catalog's URL such as http://iceberg-rest:8181",
                ))
            }
            CatalogKind::Sql if self.warehouse.is_empty() => {
                return Err(Error::spec(
                    format!("{field}.warehouse"),
                    "a SQL catalog needs a warehouse such as file:///var/sluice/warehouse or s3://bucket/warehouse",
                ))
            }
            _ => {}
        }
        let supported = ["file://", "s3://", "s3a://", "/"];
        if !self.warehouse.is_empty() && !supported.iter().any(|p| self.warehouse.starts_with(p)) {
            return Err(Error::spec(
                format!("{field}.warehouse"),
                "expected a local warehouse (file:///var/sluice/warehouse) or S3-compatible object storage (s3://bucket/warehouse)",
            ));
        }
        Ok(kind)
    }
}

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

impl JobSpec {
    /// The job's id: its name.
    pub fn job_id(&self) -> crate::JobId {
        crate::JobId::new(self.name.clone())
    }

    /// Parses a spec from YAML (JSON is valid YAML) and validates it.
    pub fn parse(text: &str) -> Result<JobSpec> {
        let mut spec: JobSpec = serde_yaml_ng::from_str(text).map_err(|e| {
            let field = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "spec".into());
            Error::spec(field, e.to_string())
        })?;
        spec.resolve_sql_window()?;
        let partition_by = &mut spec.sink.iceberg.partition_by;
        *partition_by = crate::partition::rejoin(partition_by);
        spec.validate()?;
        Ok(spec)
    }

    /// Turns a `tumble()`/`hop()` the SQL groups by into `source.kafka.window` (a
    /// `session()` into `source.kafka.session`) and the
    /// window's columns (see [`crate::window_sql`]); a parsed spec holds no window calls.
    fn resolve_sql_window(&mut self) -> Result<()> {
        let found = crate::window_sql::extract_window(&self.sql)
            .map_err(|message| Error::spec("sql", message))?;
        let Some((sql, window)) = found else {
            return Ok(());
        };
        let kafka = &mut self.source.kafka;
        if kafka.is_windowed() {
            return Err(Error::spec(
                "sql",
                "groups by a window and source.kafka.window or source.kafka.session is set too; keep one",
            ));
        }
        match &kafka.watermark {
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
                    "windows need source.kafka.watermark (the event-time column and the allowed lateness)",
                ))
            }
        }
        match window.kind {
            SqlWindowKind::Fixed { size_ms, slide_ms } => {
                kafka.window = Some(WindowSpec {
                    size: format!("{size_ms}ms"),
                    slide: (slide_ms != size_ms).then(|| format!("{slide_ms}ms")),
                })
            }
            SqlWindowKind::Session { gap_ms, key } => {
                kafka.session = Some(SessionSpec {
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

    fn validate(&self) -> Result<()> {
        validate_identifier("name", &self.name)?;
        let kafka = &self.source.kafka;
        if kafka.bootstrap_servers.trim().is_empty() {
            return Err(Error::spec(
                "source.kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        if kafka.topics.is_empty() && kafka.topic_pattern.is_none() {
            return Err(Error::spec(
                "source.kafka.topics",
                "name at least one topic (or set source.kafka.topic_pattern)",
            ));
        }
        kafka.topic_matcher()?;
        for (i, topic) in kafka.topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(Error::spec(
                    format!("source.kafka.topics[{i}]"),
                    "must not be empty",
                ));
            }
        }
        if kafka.max_offsets_per_trigger == Some(0) {
            return Err(Error::spec(
                "source.kafka.max_offsets_per_trigger",
                "must be above zero",
            ));
        }
        if let StartingOffsets::Timestamp(ms) = kafka.starting_offsets {
            if ms < 0 {
                return Err(Error::spec(
                    "source.kafka.starting_offsets.timestamp",
                    "must not be before 1970",
                ));
            }
        }
        if let StartingOffsets::PerPartition(map) = &kafka.starting_offsets {
            for (topic, partitions) in map {
                if !kafka.reads_topic(topic)? {
                    return Err(Error::spec(
                        format!("source.kafka.starting_offsets.{topic}"),
                        "topic is not in source.kafka.topics and does not match its topic_pattern",
                    ));
                }
                for (partition, offset) in partitions {
                    if *offset < 0 || *partition < 0 {
                        return Err(Error::spec(
                            format!("source.kafka.starting_offsets.{topic}.{partition}"),
                            "partitions and offsets must not be negative",
                        ));
                    }
                }
            }
        }
        match (kafka.format, &kafka.avro) {
            (RecordFormat::Avro, Some(avro)) => avro.validate()?,
            (RecordFormat::Avro, None) => {
                return Err(Error::spec(
                    "source.kafka.avro",
                    "format avro needs avro: {schema_registry: {url: …}} and/or {schema: …}",
                ))
            }
            (_, Some(_)) => {
                return Err(Error::spec("source.kafka.avro", "is for format avro only"))
            }
            _ => {}
        }
        match kafka.format {
            RecordFormat::Json | RecordFormat::Avro if kafka.schema.is_empty() => {
                return Err(Error::spec(
                    "source.kafka.schema",
                    "formats json and avro need a schema: a list of {name, type}",
                ))
            }
            RecordFormat::Raw if !kafka.schema.is_empty() => {
                return Err(Error::spec(
                    "source.kafka.schema",
                    "format raw has no schema: the value is the binary column `value`",
                ))
            }
            _ => {}
        }
        validate_source_schema(kafka)?;
        self.trigger.resolve()?;
        if self.sql.trim().is_empty() {
            return Err(Error::spec("sql", "must not be empty"));
        }
        let sink = &self.sink.iceberg;
        sink.catalog.validate("sink.iceberg.catalog")?;
        validate_identifier("sink.iceberg.namespace", &sink.namespace)?;
        validate_identifier("sink.iceberg.table", &sink.table)?;
        sink.parquet.codec()?;
        sink.compaction.validate()?;
        if sink.target_file_size == Some(0) {
            return Err(Error::spec(
                "sink.iceberg.target_file_size",
                "must be above zero (bytes)",
            ));
        }
        sink.partition_fields()?;
        if sink.parquet.row_group_rows == Some(0) {
            return Err(Error::spec(
                "sink.iceberg.parquet.row_group_rows",
                "must be above zero",
            ));
        }
        if let Some(table) = &sink.dead_letter_table {
            validate_identifier("sink.iceberg.dead_letter_table", table)?;
            if *table == sink.table {
                return Err(Error::spec(
                    "sink.iceberg.dead_letter_table",
                    "must differ from sink.iceberg.table",
                ));
            }
        }
        if kafka.max_record_bytes == Some(0) {
            return Err(Error::spec(
                "source.kafka.max_record_bytes",
                "must be above zero",
            ));
        }
        validate_kafka_properties(&kafka.properties)?;
        if let Some(watermark) = &kafka.watermark {
            watermark.validate(kafka)?;
            if watermark.late == LateRecords::DeadLetter && !kafka.is_stateful() {
                return Err(Error::spec(
                    "source.kafka.watermark.late",
                    "only windows and deduplication drop late records; without them late records are counted and kept",
                ));
            }
        }
        if let Some(window) = &kafka.window {
            window.slide_ms()?;
            if kafka.watermark.is_none() {
                return Err(Error::spec(
                    "source.kafka.window",
                    "windows need source.kafka.watermark (the event-time column and the allowed lateness)",
                ));
            }
        }
        if let Some(dedup) = &kafka.dedup {
            dedup.validate(kafka)?;
        }
        if let Some(session) = &kafka.session {
            session.validate(kafka)?;
        }
        if let Some(depth) = kafka.max_nesting_depth {
            if !(1..=MAX_NESTING_DEPTH_LIMIT).contains(&depth) {
                return Err(Error::spec(
                    "source.kafka.max_nesting_depth",
                    format!("must be between 1 and {MAX_NESTING_DEPTH_LIMIT}"),
                ));
            }
        }
        if self.parallelism.tasks_per_slot == 0 {
            return Err(Error::spec(
                "parallelism.tasks_per_slot",
                "must be above zero",
            ));
        }
        if self.parallelism.max_records_per_task == 0 {
            return Err(Error::spec(
                "parallelism.max_records_per_task",
                "must be above zero",
            ));
        }
        if self.parallelism.shuffle_partitions == 0 {
            return Err(Error::spec(
                "parallelism.shuffle_partitions",
                "must be above zero",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, table) in self.tables.iter().enumerate() {
            let field = format!("tables[{i}]");
            validate_identifier(&format!("{field}.name"), &table.name)?;
            if table.name == SOURCE_TABLE || !names.insert(table.name.as_str()) {
                return Err(Error::spec(
                    format!("{field}.name"),
                    format!("{:?} is already a table of this job", table.name),
                ));
            }
            match (&table.parquet, &table.iceberg) {
                (Some(path), None) if path.trim().is_empty() => {
                    return Err(Error::spec(format!("{field}.parquet"), "must not be empty"))
                }
                (Some(_), None) => {}
                (None, Some(iceberg)) => {
                    iceberg
                        .catalog
                        .validate(&format!("{field}.iceberg.catalog"))?;
                }
                _ => {
                    return Err(Error::spec(
                        field,
                        "give exactly one of `parquet` (files) or `iceberg` (a table)",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Names become etcd keys, file names and table identifiers: keep them plain.
/// Longest name, namespace or table: names become etcd keys, file names and metric
/// labels.
pub const MAX_IDENTIFIER_CHARS: usize = 128;

fn validate_identifier(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::spec(field, "must not be empty"));
    }
    if value.len() > MAX_IDENTIFIER_CHARS {
        return Err(Error::spec(
            field,
            format!(
                "is {} characters long; at most {MAX_IDENTIFIER_CHARS}",
                value.len()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::spec(
            field,
            format!("{value:?} contains {bad:?}; use letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}

impl FieldSpec {
    /// The Arrow field of a source column; `path` names it in errors.
    pub fn arrow_field(&self, path: &str) -> Result<Field> {
        let spec = self;
        let data_type = match spec.data_type.as_str() {
            "utf8" | "string" => DataType::Utf8,
            "bool" | "boolean" => DataType::Boolean,
            "int32" | "int" => DataType::Int32,
            "int64" | "long" | "bigint" => DataType::Int64,
            "float32" | "float" => DataType::Float32,
            "float64" | "double" => DataType::Float64,
            "date" | "date32" => DataType::Date32,
            "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, None),
            "timestamp_us" | "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
            "binary" => DataType::Binary,
            "struct" => {
                if spec.fields.is_empty() {
                    return Err(Error::spec(path, "a struct needs `fields`"));
                }
                let children = spec
                    .fields
                    .iter()
                    .map(|child| child.arrow_field(&format!("{path}.{}", child.name)))
                    .collect::<Result<Vec<_>>>()?;
                DataType::Struct(Fields::from(children))
            }
            other => {
                return Err(Error::spec(
                    path,
                    format!(
                        "unknown type {other:?}; use utf8, bool, int32, int64, float32, float64, \
                         date, timestamp_ms, timestamp_us, binary or struct"
                    ),
                ))
            }
        };
        if spec.data_type != "struct" && !spec.fields.is_empty() {
            return Err(Error::spec(path, "only a struct has `fields`"));
        }
        Ok(Field::new(&spec.name, data_type, spec.nullable))
    }
}

/// Checks a JSON source's schema: names present, unique and not taken by a metadata
/// column; every type known.
pub fn validate_source_schema(kafka: &KafkaSourceSpec) -> Result<()> {
    source_fields(kafka).map(|_| ())
}

/// The Arrow fields of a JSON source's schema, checked as [`validate_source_schema`] says.
pub fn source_fields(kafka: &KafkaSourceSpec) -> Result<Vec<Field>> {
    let mut names = std::collections::HashSet::new();
    let mut fields = Vec::with_capacity(kafka.schema.len());
    for field in &kafka.schema {
        let path = format!("source.kafka.schema.{}", field.name);
        if field.name.is_empty() {
            return Err(Error::spec(
                "source.kafka.schema",
                "a field has an empty name",
            ));
        }
        if METADATA_COLUMNS.contains(&field.name.as_str())
            || field.name == SEEN_COLUMN
            || (kafka.is_windowed()
                && [WINDOW_START_COLUMN, WINDOW_END_COLUMN].contains(&field.name.as_str()))
        {
            return Err(Error::spec(
                path,
                "the name is taken by a Kafka metadata column",
            ));
        }
        if !names.insert(field.name.as_str()) {
            return Err(Error::spec(path, "the name appears twice"));
        }
        fields.push(field.arrow_field(&path)?);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
name: orders-filtered
source:
  kafka:
    bootstrap_servers: "localhost:9092"
    topics: [orders]
    starting_offsets: earliest
    max_offsets_per_trigger: 1000
    format: json
    schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]
trigger: {processing_time: 500ms}
sql: SELECT order_id, amount FROM source WHERE amount > 10
sink:
  iceberg:
    catalog: {type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}
    namespace: shop
    table: big_orders
"#;

    fn with(replace: &str, by: &str) -> String {
        assert!(EXAMPLE.contains(replace), "example lacks {replace}");
        EXAMPLE.replace(replace, by)
    }

    fn error_field(text: &str) -> String {
        match JobSpec::parse(text) {
            Err(Error::InvalidSpec { field, .. }) => field,
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    fn error_text(text: &str) -> String {
        match JobSpec::parse(text) {
            Err(e @ Error::InvalidSpec { .. }) => e.to_string(),
            other => panic!("expected an invalid spec, got {other:?}"),
        }
    }

    #[test]
    fn example_spec_parses_with_defaults() {
        let spec = JobSpec::parse(EXAMPLE).unwrap();
        assert_eq!(spec.name, "orders-filtered");
        assert_eq!(
            spec.source.kafka.starting_offsets,
            StartingOffsets::Earliest
        );
        assert_eq!(spec.source.kafka.on_malformed, OnMalformed::Fail);
        assert_eq!(
            spec.trigger(),
            Trigger::ProcessingTime(Duration::from_millis(500))
        );
        assert_eq!(spec.parallelism, ParallelismSpec::default());
        assert_eq!(spec.sink.iceberg.catalog.name(), "default");
    }

    #[test]
    fn spec_round_trips_through_json() {
        let spec = JobSpec::parse(EXAMPLE).unwrap();
        assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
        let per_partition = with(
            "starting_offsets: earliest",
            "starting_offsets: {orders: {0: 5, 3: 7}}",
        );
        let spec = JobSpec::parse(&per_partition).unwrap();
        let StartingOffsets::PerPartition(map) = &spec.source.kafka.starting_offsets else {
            panic!("expected per-partition offsets");
        };
        assert_eq!(map["orders"][&3], 7);
        assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
    }

    #[test]
    fn starting_offsets_by_time_take_milliseconds_or_rfc3339() {
        let starting = |value: &str| {
            let text = with(
                "starting_offsets: earliest",
                &format!("starting_offsets: {value}"),
            );
            JobSpec::parse(&text).map(|spec| spec.source.kafka.starting_offsets)
        };
        assert_eq!(
            starting("{timestamp: 1764547200000}").unwrap(),
            StartingOffsets::Timestamp(1_764_547_200_000)
        );
        assert_eq!(
            starting("{timestamp: '2025-12-01T00:00:00Z'}").unwrap(),
            StartingOffsets::Timestamp(1_764_547_200_000)
        );
        let spec = JobSpec::parse(&with(
            "starting_offsets: earliest",
            "starting_offsets: {timestamp: 1764547200000}",
        ))
        .unwrap();
        assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
        // A topic called `timestamp` is still a per-partition map.
        let topic = JobSpec::parse(&with("topics: [orders]", "topics: [timestamp]").replace(
            "starting_offsets: earliest",
            "starting_offsets: {timestamp: {0: 4}}",
        ))
        .unwrap();
        assert!(matches!(
            topic.source.kafka.starting_offsets,
            StartingOffsets::PerPartition(_)
        ));
        let error = starting("{timestamp: 'yesterday'}")
            .unwrap_err()
            .to_string();
        assert!(error.contains("bad timestamp \"yesterday\""), "{error}");
        let error = starting("{timestamp: -5}").unwrap_err().to_string();
        assert!(error.contains("starting_offsets.timestamp"), "{error}");
    }

    #[test]
    fn tasks_per_slot_defaults_to_one_and_must_be_above_zero() {
        assert_eq!(
            JobSpec::parse(EXAMPLE).unwrap().parallelism.tasks_per_slot,
            1
        );
        let three = format!("{EXAMPLE}\nparallelism: {{tasks_per_slot: 3}}\n");
        assert_eq!(
            JobSpec::parse(&three).unwrap().parallelism.tasks_per_slot,
            3
        );
        let zero = format!("{EXAMPLE}\nparallelism: {{tasks_per_slot: 0}}\n");
        assert_eq!(error_field(&zero), "parallelism.tasks_per_slot");
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(
            error_field(&with("name: orders-filtered", "name: 'a b'")),
            "name"
        );
        assert_eq!(
            error_field(&with("topics: [orders]", "topics: []")),
            "source.kafka.topics"
        );
        let err = error_text(&with(
            "starting_offsets: earliest",
            "starting_offsets: newest",
        ));
        assert!(err.contains("source.kafka.starting_offsets"), "{err}");
        assert_eq!(
            error_field(&with(
                "starting_offsets: earliest",
                "starting_offsets: {other: {0: 1}}"
            )),
            "source.kafka.starting_offsets.other"
        );
        assert_eq!(
            error_field(&with(
                "max_offsets_per_trigger: 1000",
                "max_offsets_per_trigger: 0"
            )),
            "source.kafka.max_offsets_per_trigger"
        );
        assert_eq!(
            error_field(&with("{processing_time: 500ms}", "{processing_time: soon}")),
            "trigger.processing_time"
        );
        assert_eq!(
            error_field(&with(
                "{processing_time: 500ms}",
                "{processing_time: 1s, once: true}"
            )),
            "trigger"
        );
        assert_eq!(
            error_field(&with("type: sql", "type: hive")),
            "sink.iceberg.catalog.type"
        );
        assert_eq!(
            error_field(&with("type: sql", "type: rest")),
            "sink.iceberg.catalog.uri"
        );
        assert_eq!(
            error_field(&with("file:///tmp/wh", "hdfs://nn/wh")),
            "sink.iceberg.catalog.warehouse"
        );
        assert_eq!(
            error_field(&with(", warehouse: \"file:///tmp/wh\"", "")),
            "sink.iceberg.catalog.warehouse"
        );
        assert_eq!(
            error_field(&with(
                "{name: amount, type: float64}",
                "{name: amount, type: money}"
            )),
            "source.kafka.schema.amount"
        );
        assert_eq!(
            error_field(&with(
                "{name: amount, type: float64}",
                "{name: _offset, type: int64}"
            )),
            "source.kafka.schema._offset"
        );
    }

    #[test]
    fn rest_catalogs_and_object_storage_warehouses_are_accepted() {
        let spec = JobSpec::parse(&with(
            r#"{type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}"#,
            r#"{type: rest, uri: "http://rest:8181", warehouse: "s3://lake/wh",
                properties: {s3.endpoint: "http://minio:9000", s3.path-style-access: "true"}}"#,
        ))
        .unwrap();
        let catalog = &spec.sink.iceberg.catalog;
        assert_eq!(catalog.validate("c").unwrap(), CatalogKind::Rest);
        assert_eq!(catalog.properties["s3.endpoint"], "http://minio:9000");
        let spec = JobSpec::parse(&with("file:///tmp/wh", "s3://lake/wh")).unwrap();
        assert_eq!(
            spec.sink.iceberg.catalog.validate("c").unwrap(),
            CatalogKind::Sql
        );
    }

    #[test]
    fn unknown_and_missing_fields_are_reported_with_their_location() {
        let err = JobSpec::parse(&with("sql:", "sqll:"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sqll"), "{err}");
        let err = JobSpec::parse("name: x").unwrap_err().to_string();
        assert!(err.contains("missing field"), "{err}");
    }

    #[test]
    fn raw_format_needs_no_schema_and_json_needs_one() {
        let raw = with("format: json", "format: raw").replace(
            "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]",
            "",
        );
        assert!(JobSpec::parse(&raw).is_ok());
        let schemaless = EXAMPLE.replace(
            "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]",
            "",
        );
        assert_eq!(error_field(&schemaless), "source.kafka.schema");
    }

    #[test]
    fn a_watermark_names_a_timestamp_column_and_a_delay() {
        let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
        let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
        let spec =
            |watermark: &str| with(schema, &format!("{with_ts}\n    watermark: {watermark}"));
        let parsed = JobSpec::parse(&spec("{column: ts, delay: 30s}")).unwrap();
        let watermark = parsed.source.kafka.watermark.unwrap();
        assert_eq!(watermark.delay_ms().unwrap(), 30_000);
        assert!(JobSpec::parse(&spec("{column: _timestamp, delay: 0s}")).is_ok());
        assert_eq!(
            (
                watermark.idle_timeout_ms().unwrap(),
                watermark.advance_when_idle_ms().unwrap()
            ),
            (None, None)
        );
        let idle = JobSpec::parse(&spec(
            "{column: ts, delay: 5s, idle_timeout: 1m, advance_when_idle: 10s}",
        ))
        .unwrap();
        let idle = idle.source.kafka.watermark.unwrap();
        assert_eq!(
            (
                idle.idle_timeout_ms().unwrap(),
                idle.advance_when_idle_ms().unwrap()
            ),
            (Some(60_000), Some(10_000))
        );
        for (bad, why) in [
            (
                "{column: order_id, delay: 30s}",
                "timestamp_ms or timestamp_us",
            ),
            ("{column: nope, delay: 30s}", "not a column"),
            ("{column: ts, delay: soon}", "not a duration"),
            ("{column: ts, delay: 5s, idle_timeout: 0s}", "above zero"),
            (
                "{column: ts, delay: 5s, idle_timeout: never}",
                "not a duration",
            ),
            (
                "{column: ts, delay: 5s, advance_when_idle: 10s}",
                "needs source.kafka.watermark.idle_timeout",
            ),
            (
                "{column: ts, delay: 5s, idle_timeout: 1m, advance_when_idle: later}",
                "not a duration",
            ),
        ] {
            let message = error_text(&spec(bad));
            assert!(message.contains(why), "{bad}: {message}");
            assert!(message.contains("source.kafka.watermark"), "{message}");
        }
    }

    #[test]
    fn dedup_names_source_columns_and_needs_a_watermark() {
        let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
        let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
        let watermark = "watermark: {column: ts, delay: 30s}";
        let spec = |options: &str| with(schema, &format!("{with_ts}\n    {options}"));
        let parsed = JobSpec::parse(&spec(&format!(
            "{watermark}\n    dedup: {{key: [order_id, _key], within: 10m}}"
        )))
        .unwrap();
        let dedup = parsed.source.kafka.dedup.as_ref().unwrap();
        assert_eq!(dedup.within_ms().unwrap(), 600_000);
        assert!(parsed.source.kafka.is_stateful());
        let tumbling =
            format!("{watermark}\n    window: {{size: 1m}}\n    dedup: {{key: [order_id]}}");
        assert!(
            JobSpec::parse(&spec(&tumbling)).is_ok(),
            "deduplicated tumbling windows"
        );
        for (options, why) in [
            ("dedup: {key: [order_id]}", "needs source.kafka.watermark"),
            (
                &format!("{watermark}\n    dedup: {{key: []}}"),
                "names no column",
            ),
            (
                &format!("{watermark}\n    dedup: {{key: [nope]}}"),
                "not a column",
            ),
            (
                &format!("{watermark}\n    dedup: {{key: [order_id], within: later}}"),
                "not a duration",
            ),
        ] {
            let message = error_text(&spec(options));
            assert!(message.contains(why), "{options}: {message}");
            assert!(message.contains("source.kafka.dedup"), "{message}");
        }
        let late =
            "watermark: {column: ts, delay: 30s, late: dead_letter}\n    dedup: {key: [order_id]}";
        assert!(JobSpec::parse(&spec(late))
            .unwrap()
            .source
            .kafka
            .writes_dead_letters());
        let stateless = spec("watermark: {column: ts, delay: 30s, late: dead_letter}");
        assert!(error_text(&stateless).contains("only windows and deduplication drop late records"));
        let hidden = "schema: [{name: _sluice_seen, type: utf8}]";
        assert!(error_text(&with(schema, hidden)).contains("taken"));
    }

    #[test]
    fn a_topic_pattern_matches_whole_names_and_never_internal_topics() {
        let parse = |yaml: &str| -> KafkaSourceSpec { serde_yaml_ng::from_str(yaml).unwrap() };
        let kafka = parse(r"{bootstrap_servers: b, topic_pattern: 'orders\..*'}");
        let matcher = kafka.topic_matcher().unwrap();
        assert!(matcher.matches("orders.eu") && matcher.matches("orders.us"));
        assert!(
            !matcher.matches("old.orders.eu"),
            "the whole name must match"
        );
        assert!(!matcher.matches("orders"));
        let everything = parse(r"{bootstrap_servers: b, topics: [__keep], topic_pattern: '.*'}");
        let matcher = everything.topic_matcher().unwrap();
        assert!(matcher.matches("anything") && !matcher.matches("__consumer_offsets"));
        assert!(
            matcher.matches("__keep"),
            "a named topic is read whatever its name"
        );
        let bad = parse("{bootstrap_servers: b, topic_pattern: 'orders.('}");
        assert!(bad
            .topic_matcher()
            .unwrap_err()
            .to_string()
            .contains("not a regular expression"));
    }

    #[test]
    fn a_session_in_the_sql_becomes_the_source_session_keyed_by_the_group_by_columns() {
        let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
        let with_ts = "schema: [{name: customer_id, type: int64}, {name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
        let spec = |options: &str, sql: &str| {
            let text = with(schema, &format!("{with_ts}\n    {options}"));
            let line = text.lines().find(|l| l.starts_with("sql:")).unwrap();
            text.replace(line, sql)
        };
        let watermark = "watermark: {column: ts, delay: 30s}";
        let sql = "sql: SELECT window_start, window_end, customer_id, count(*) AS n FROM source GROUP BY session(ts, INTERVAL '30 seconds'), customer_id";
        let parsed = JobSpec::parse(&spec(watermark, sql)).unwrap();
        let session = parsed.source.kafka.session.as_ref().unwrap();
        assert_eq!(
            (session.gap_ms().unwrap(), session.key.clone()),
            (30_000, vec!["customer_id".to_string()])
        );
        assert!(parsed.source.kafka.is_windowed() && parsed.source.kafka.window.is_none());
        assert_eq!(JobSpec::parse(&parsed.to_json()).unwrap(), parsed);
        let plain_sql = "sql: SELECT count(*) FROM source GROUP BY window_start, window_end";
        for (options, sql, why) in [
            (
                "fail_on_data_loss: true",
                sql,
                "need source.kafka.watermark",
            ),
            (
                &format!("{watermark}\n    session: {{gap: 10s, key: [nobody]}}"),
                plain_sql,
                "\"nobody\" is not a column",
            ),
            (
                &format!("{watermark}\n    session: {{gap: 10s}}\n    dedup: {{key: [order_id]}}"),
                plain_sql,
                "cannot be combined",
            ),
            (
                &format!("{watermark}\n    session: {{gap: 0s}}"),
                plain_sql,
                "must be above zero",
            ),
        ] {
            let message = error_text(&spec(options, sql));
            assert!(message.contains(why), "{options}: {message}");
        }
    }

    #[test]
    fn a_window_in_the_sql_becomes_the_source_window() {
        let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
        let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
        let sql = "sql: SELECT window_start, count(*) AS n FROM source GROUP BY hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes')";
        let spec = |options: &str| {
            let text = with(schema, &format!("{with_ts}\n    {options}"));
            let line = text.lines().find(|l| l.starts_with("sql:")).unwrap();
            text.replace(line, sql)
        };
        let parsed = JobSpec::parse(&spec("watermark: {column: ts, delay: 30s}")).unwrap();
        let window = parsed.source.kafka.window.as_ref().unwrap();
        assert_eq!(
            (window.size_ms().unwrap(), window.slide_ms().unwrap()),
            (300_000, 60_000)
        );
        assert!(
            parsed.sql.ends_with("GROUP BY window_start, window_end"),
            "{}",
            parsed.sql
        );
        let again = JobSpec::parse(&parsed.to_json()).unwrap();
        assert_eq!(again, parsed, "a parsed spec parses to itself");
        for (options, why) in [
            (
                "watermark: {column: _timestamp, delay: 30s}",
                "the watermark over",
            ),
            ("fail_on_data_loss: true", "need source.kafka.watermark"),
            (
                "watermark: {column: ts, delay: 30s}\n    window: {size: 1m}",
                "keep one",
            ),
        ] {
            let message = error_text(&spec(options));
            assert!(message.contains(why), "{options}: {message}");
            assert!(message.contains("sql"), "{message}");
        }
    }
}
