//! The Arrow schema of the `source` table a job's SQL sees.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::Result;
use crate::spec::{source_fields, EventTime, KafkaSourceSpec, RecordFormat};
pub use crate::spec::{
    KEY_COLUMN, OFFSET_COLUMN, PARTITION_COLUMN, RAW_VALUE_COLUMN, SEEN_COLUMN, TIMESTAMP_COLUMN,
    TOPIC_COLUMN, WINDOW_END_COLUMN, WINDOW_START_COLUMN,
};

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

/// The columns decoded from record values (without metadata columns); fails as
/// [`crate::spec::validate_source_schema`] does on an invalid schema.
pub fn value_schema(kafka: &KafkaSourceSpec) -> Result<SchemaRef> {
    let fields = match kafka.format {
        RecordFormat::Raw => vec![Field::new(RAW_VALUE_COLUMN, DataType::Binary, true)],
        RecordFormat::Json | RecordFormat::Avro => source_fields(kafka)?,
    };
    Ok(Arc::new(Schema::new(fields)))
}

/// The columns of a windowed source's record window, after the metadata columns.
pub fn window_fields() -> Vec<Field> {
    let timestamp = DataType::Timestamp(TimeUnit::Millisecond, None);
    vec![
        Field::new(WINDOW_START_COLUMN, timestamp.clone(), true),
        Field::new(WINDOW_END_COLUMN, timestamp, true),
    ]
}

/// The full schema of the source's table the SQL sees: decoded columns followed by Kafka
/// metadata columns, and the window columns of a windowed job.
pub fn source_schema(kafka: &KafkaSourceSpec, event_time: EventTime) -> Result<SchemaRef> {
    let mut fields = stream_fields(kafka, event_time)?;
    if event_time.session.is_some()
        || (event_time.window.is_some() && !event_time.windows_at_decode())
    {
        fields.extend(window_fields());
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// The columns of a decoded record: decoded columns, metadata columns, and the window
/// columns the decoder adds for fixed windows (sessions, and windows over deduplicated
/// records, get theirs from the query's view).
pub fn stream_schema(kafka: &KafkaSourceSpec, event_time: EventTime) -> Result<SchemaRef> {
    Ok(Arc::new(Schema::new(stream_fields(kafka, event_time)?)))
}

fn stream_fields(kafka: &KafkaSourceSpec, event_time: EventTime) -> Result<Vec<Field>> {
    let values = value_schema(kafka)?;
    let mut fields: Vec<Field> = values.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend(metadata_fields());
    if event_time.windows_at_decode() {
        fields.extend(window_fields());
    }
    Ok(fields)
}

/// What source tasks hand the plan: the decoded records' columns, plus [`SEEN_COLUMN`]
/// when the job deduplicates (its state rows travel with the batch's records, marked
/// seen).
pub fn scan_schema(kafka: &KafkaSourceSpec, event_time: EventTime) -> Result<SchemaRef> {
    let mut fields = stream_fields(kafka, event_time)?;
    if event_time.dedup.is_some() {
        fields.push(Field::new(SEEN_COLUMN, DataType::Boolean, false));
    }
    Ok(Arc::new(Schema::new(fields)))
}
