//! The Arrow schema of the `source` table a job's SQL sees.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, Result};
use crate::spec::{FieldSpec, KafkaSourceSpec, RecordFormat};

/// Kafka metadata columns appended to every decoded record.
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

/// The Kafka metadata columns, in the order they follow the decoded columns.
pub fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new(TOPIC_COLUMN, DataType::Utf8, false),
        Field::new(PARTITION_COLUMN, DataType::Int32, false),
        Field::new(OFFSET_COLUMN, DataType::Int64, false),
        Field::new(
            TIMESTAMP_COLUMN,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new(KEY_COLUMN, DataType::Binary, true),
    ]
}

/// The columns decoded from record values (without metadata columns).
pub fn value_schema(kafka: &KafkaSourceSpec) -> Result<SchemaRef> {
    let fields = match kafka.format {
        RecordFormat::Raw => vec![Field::new(RAW_VALUE_COLUMN, DataType::Binary, true)],
        RecordFormat::Json => {
            let mut fields = Vec::with_capacity(kafka.schema.len());
            for spec in &kafka.schema {
                let path = format!("source.kafka.schema.{}", spec.name);
                if spec.name.is_empty() {
                    return Err(Error::spec(
                        "source.kafka.schema",
                        "a field has an empty name",
                    ));
                }
                if METADATA_COLUMNS.contains(&spec.name.as_str()) {
                    return Err(Error::spec(
                        path,
                        "the name is taken by a Kafka metadata column",
                    ));
                }
                if fields.iter().any(|f: &Field| f.name() == &spec.name) {
                    return Err(Error::spec(path, "the name appears twice"));
                }
                fields.push(field(spec, &path)?);
            }
            fields
        }
    };
    Ok(Arc::new(Schema::new(fields)))
}

/// The full `source` schema: decoded columns followed by Kafka metadata columns.
pub fn source_schema(kafka: &KafkaSourceSpec) -> Result<SchemaRef> {
    let values = value_schema(kafka)?;
    let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(metadata_fields());
    Ok(Arc::new(Schema::new(fields)))
}

fn field(spec: &FieldSpec, path: &str) -> Result<Field> {
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
                .map(|child| field(child, &format!("{path}.{}", child.name)))
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
