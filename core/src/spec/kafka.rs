//! The Kafka source (`source.kafka`): brokers, topics, where to start, how records decode,
//! and the client properties.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::source::{default_true, validate_source_schema, FieldSpec};
use crate::avro::AvroSpec;
use crate::error::{Error, Result};

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
}

/// JSON nesting allowed unless the spec says otherwise (`source.kafka.max_nesting_depth`).
pub const DEFAULT_MAX_NESTING_DEPTH: u32 = 64;
/// The deepest `max_nesting_depth` a spec may ask for: deeper values would reach code
/// that recurses per level with a thread's stack.
pub const MAX_NESTING_DEPTH_LIMIT: u32 = 1024;

/// Records above this size are malformed unless the spec says otherwise.
pub const DEFAULT_MAX_RECORD_BYTES: u64 = 8 << 20;

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

    /// The size above which a record is malformed.
    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes.unwrap_or(DEFAULT_MAX_RECORD_BYTES)
    }

    /// The nesting depth above which a JSON record is malformed.
    pub fn max_nesting_depth(&self) -> u32 {
        self.max_nesting_depth.unwrap_or(DEFAULT_MAX_NESTING_DEPTH)
    }
}

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

impl KafkaSourceSpec {
    /// Checks the Kafka settings that need no broker: topics, bounds, format and schema,
    /// client properties.
    pub(super) fn validate(&self) -> Result<()> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::spec(
                "source.kafka.bootstrap_servers",
                "must not be empty",
            ));
        }
        self.validate_topics()?;
        if self.max_offsets_per_trigger == Some(0) {
            return Err(Error::spec(
                "source.kafka.max_offsets_per_trigger",
                "must be above zero",
            ));
        }
        self.validate_starting_offsets()?;
        self.validate_format()?;
        validate_source_schema(self)?;
        if self.max_record_bytes == Some(0) {
            return Err(Error::spec(
                "source.kafka.max_record_bytes",
                "must be above zero",
            ));
        }
        validate_kafka_properties(&self.properties)?;
        if let Some(depth) = self.max_nesting_depth {
            if !(1..=MAX_NESTING_DEPTH_LIMIT).contains(&depth) {
                return Err(Error::spec(
                    "source.kafka.max_nesting_depth",
                    format!("must be between 1 and {MAX_NESTING_DEPTH_LIMIT}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_topics(&self) -> Result<()> {
        if self.topics.is_empty() && self.topic_pattern.is_none() {
            return Err(Error::spec(
                "source.kafka.topics",
                "name at least one topic (or set source.kafka.topic_pattern)",
            ));
        }
        self.topic_matcher()?;
        for (i, topic) in self.topics.iter().enumerate() {
            if topic.trim().is_empty() {
                return Err(Error::spec(
                    format!("source.kafka.topics[{i}]"),
                    "must not be empty",
                ));
            }
        }
        Ok(())
    }

    fn validate_starting_offsets(&self) -> Result<()> {
        if let StartingOffsets::Timestamp(ms) = self.starting_offsets {
            if ms < 0 {
                return Err(Error::spec(
                    "source.kafka.starting_offsets.timestamp",
                    "must not be before 1970",
                ));
            }
        }
        if let StartingOffsets::PerPartition(map) = &self.starting_offsets {
            for (topic, partitions) in map {
                if !self.reads_topic(topic)? {
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
        Ok(())
    }

    fn validate_format(&self) -> Result<()> {
        match (self.format, &self.avro) {
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
        match self.format {
            RecordFormat::Json | RecordFormat::Avro if self.schema.is_empty() => Err(Error::spec(
                "source.kafka.schema",
                "formats json and avro need a schema: a list of {name, type}",
            )),
            RecordFormat::Raw if !self.schema.is_empty() => Err(Error::spec(
                "source.kafka.schema",
                "format raw has no schema: the value is the binary column `value`",
            )),
            _ => Ok(()),
        }
    }
}
