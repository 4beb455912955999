//! Query output -> Parquet data files in the table location. Never commits: the data
//! files' metadata goes back to the driver, which commits the whole batch at once.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sluice_core::{Error, Result};

/// Converts a query result batch to the table's Arrow schema, column by column by name.
pub fn to_table_batch(batch: &RecordBatch, table_schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = table_schema
        .fields()
        .iter()
        .map(|field| match batch.column_by_name(field.name()) {
            Some(column) if column.data_type() == field.data_type() => Ok(column.clone()),
            Some(column) => Ok(cast(column, field.data_type())?),
            None => Ok(arrow::array::new_null_array(
                field.data_type(),
                batch.num_rows(),
            )),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(table_schema.clone(), columns)?)
}

/// Writes `batches` as data files named `{file_prefix}-NNNNN.parquet` under the table's
/// data location. Returns no files for no rows.
pub async fn write_data_files(
    table: &Table,
    table_schema: &SchemaRef,
    batches: &[RecordBatch],
    file_prefix: String,
) -> Result<Vec<DataFile>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(vec![]);
    }
    let metadata = table.metadata();
    let locations =
        DefaultLocationGenerator::new(metadata).map_err(Error::iceberg("data location"))?;
    let names = DefaultFileNameGenerator::new(file_prefix, None, DataFileFormat::Parquet);
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let parquet = ParquetWriterBuilder::new(properties, metadata.current_schema().clone());
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        parquet,
        table.file_io().clone(),
        locations,
        names,
    );
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(None)
        .await
        .map_err(Error::iceberg("opening a data file writer"))?;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        writer
            .write(to_table_batch(batch, table_schema)?)
            .await
            .map_err(Error::iceberg("writing a data file"))?;
    }
    writer
        .close()
        .await
        .map_err(Error::iceberg("closing a data file"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, Int32Array, StringViewArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    #[test]
    fn query_columns_are_cast_to_the_table_types_by_name() {
        let query = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8View, true),
            Field::new("n", DataType::Int32, true),
        ]));
        let batch = RecordBatch::try_new(
            query,
            vec![
                Arc::new(StringViewArray::from(vec!["a", "b"])),
                Arc::new(Int32Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let table = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]));
        let out = to_table_batch(&batch, &table).unwrap();
        assert_eq!(out.column(0).as_primitive::<Int64Type>().values(), &[1, 2]);
        assert_eq!(out.column(1).as_string::<i32>().value(1), "b");
    }
}
