//! What a source is in a spec, and the columns every source's table has.
//!
//! A job names its sources (`sources: {orders: …}`; `source:` is the shorthand for one
//! named `source`), and its SQL reads each as a table of that name. A source has a kind
//! (today `kafka`, see [`super::kafka`]) and, beside it, its own event time
//! (`watermark`, see [`super::event_time`]).

use std::collections::HashSet;

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde::{Deserialize, Serialize};

use super::event_time::{WatermarkSpec, SEEN_COLUMN};
use super::kafka::KafkaSourceSpec;
use crate::error::{Error, Result};

/// The name of the one source of a spec written with `source:`; the SQL reads it as the
/// table `source`.
pub const SOURCE_TABLE: &str = "source";

/// One source of a job: where its records come from, and their event time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    pub kafka: KafkaSourceSpec,
    /// Event time and allowed lateness of this source's records: the job tracks a
    /// watermark over them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<WatermarkSpec>,
}

impl SourceSpec {
    /// Whether `column` is a decoded or metadata column of the source.
    pub fn has_column(&self, column: &str) -> bool {
        self.kafka.schema.iter().any(|f| f.name == column) || METADATA_COLUMNS.contains(&column)
    }
}

/// Kafka metadata columns appended to every decoded record (the source table's last
/// columns).
pub const TOPIC_COLUMN: &str = "_topic";
pub const PARTITION_COLUMN: &str = "_partition";
pub const OFFSET_COLUMN: &str = "_offset";
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
pub const KEY_COLUMN: &str = "_key";
/// The column holding the value's bytes for `format: raw`.
pub const RAW_VALUE_COLUMN: &str = "value";

pub(super) const METADATA_COLUMNS: [&str; 5] = [
    TOPIC_COLUMN,
    PARTITION_COLUMN,
    OFFSET_COLUMN,
    TIMESTAMP_COLUMN,
    KEY_COLUMN,
];

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

pub(super) fn default_true() -> bool {
    true
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
    let mut names = HashSet::new();
    let mut fields = Vec::with_capacity(kafka.schema.len());
    for field in &kafka.schema {
        let path = format!("source.kafka.schema.{}", field.name);
        if field.name.is_empty() {
            return Err(Error::spec(
                "source.kafka.schema",
                "a field has an empty name",
            ));
        }
        if METADATA_COLUMNS.contains(&field.name.as_str()) || field.name == SEEN_COLUMN {
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
