//! Query output -> Parquet data files in the table location. Never commits: the data
//! files' metadata goes back to the driver, which commits the whole batch at once.

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::SchemaRef;
use iceberg::arrow::RecordBatchPartitionSplitter;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use parquet::basic::{Compression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use sluice_core::spec::{IcebergSinkSpec, DEFAULT_TARGET_FILE_SIZE};
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

/// How data files are written: when to roll to a new file, and the Parquet encoding.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub target_file_size: usize,
    pub properties: WriterProperties,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            target_file_size: DEFAULT_TARGET_FILE_SIZE as usize,
            properties: WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        }
    }
}

impl WriteOptions {
    /// The options `sink.iceberg` asks for (validated at submit).
    pub fn of(sink: &IcebergSinkSpec) -> Result<WriteOptions> {
        let (codec, level) = sink.parquet.codec()?;
        let invalid = |e: parquet::errors::ParquetError| Error::InvalidSpec {
            field: "sink.iceberg.parquet.compression".into(),
            message: e.to_string(),
        };
        let compression = match codec.as_str() {
            "none" => Compression::UNCOMPRESSED,
            "snappy" => Compression::SNAPPY,
            "lz4" => Compression::LZ4_RAW,
            "zstd" => Compression::ZSTD(
                level
                    .map(ZstdLevel::try_new)
                    .transpose()
                    .map_err(invalid)?
                    .unwrap_or_default(),
            ),
            _ => Compression::GZIP(
                level
                    .map(|l| GzipLevel::try_new(l as u32))
                    .transpose()
                    .map_err(invalid)?
                    .unwrap_or_default(),
            ),
        };
        let mut properties = WriterProperties::builder().set_compression(compression);
        if let Some(rows) = sink.parquet.row_group_rows {
            properties = properties.set_max_row_group_row_count(Some(rows as usize));
        }
        Ok(WriteOptions {
            target_file_size: sink.target_file_size() as usize,
            properties: properties.build(),
        })
    }
}

/// Writes `batches` as data files named `{file_prefix}-NNNNN.parquet` under the table's
/// data location, a new file each time one reaches the target size; in a partitioned
/// table, a file (or several) per partition value the rows touch, with the partition
/// values in its metadata. Returns no files for no rows.
pub async fn write_data_files(
    table: &Table,
    table_schema: &SchemaRef,
    batches: &[RecordBatch],
    file_prefix: String,
    options: &WriteOptions,
) -> Result<Vec<DataFile>> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(vec![]);
    }
    let metadata = table.metadata();
    let locations =
        DefaultLocationGenerator::new(metadata).map_err(Error::iceberg("data location"))?;
    let names = DefaultFileNameGenerator::new(file_prefix, None, DataFileFormat::Parquet);
    let parquet = ParquetWriterBuilder::new(
        options.properties.clone(),
        metadata.current_schema().clone(),
    );
    let rolling = RollingFileWriterBuilder::new(
        parquet,
        options.target_file_size,
        table.file_io().clone(),
        locations,
        names,
    );
    let files = DataFileWriterBuilder::new(rolling);
    let spec = metadata.default_partition_spec();
    if spec.is_unpartitioned() {
        let mut writer = files
            .build(None)
            .await
            .map_err(Error::iceberg("opening a data file writer"))?;
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            let batch = to_table_batch(batch, table_schema)?;
            for chunk in chunks(&batch, options.target_file_size) {
                writer
                    .write(chunk)
                    .await
                    .map_err(Error::iceberg("writing a data file"))?;
            }
        }
        return writer
            .close()
            .await
            .map_err(Error::iceberg("closing a data file"));
    }
    let splitter = RecordBatchPartitionSplitter::try_new_with_computed_values(
        metadata.current_schema().clone(),
        spec.clone(),
    )
    .map_err(Error::iceberg("partitioning rows"))?;
    let mut writer = FanoutWriter::new(files);
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let batch = to_table_batch(batch, table_schema)?;
        let parts = splitter
            .split(&batch)
            .map_err(Error::iceberg("partitioning rows"))?;
        for (key, part) in parts {
            for chunk in chunks(&part, options.target_file_size) {
                writer
                    .write(key.clone(), chunk)
                    .await
                    .map_err(Error::iceberg("writing a data file"))?;
            }
        }
    }
    writer
        .close()
        .await
        .map_err(Error::iceberg("closing a data file"))
}

/// `batch` in slices the writer takes one at a time: it can start a new file only
/// between writes, so slices are small enough for the target size to be kept.
fn chunks(batch: &RecordBatch, target_file_size: usize) -> Vec<RecordBatch> {
    let rows = chunk_rows(batch, target_file_size);
    (0..batch.num_rows())
        .step_by(rows)
        .map(|offset| batch.slice(offset, rows.min(batch.num_rows() - offset)))
        .collect()
}

/// Rows written at a time: at most [`MAX_CHUNK_ROWS`], fewer when a chunk of `batch`
/// would be larger (in memory) than a quarter of the target file size.
fn chunk_rows(batch: &RecordBatch, target_file_size: usize) -> usize {
    let bytes_per_row = (batch.get_array_memory_size() / batch.num_rows().max(1)).max(1);
    (target_file_size / 4 / bytes_per_row).clamp(1, MAX_CHUNK_ROWS)
}

/// The most rows handed to the Parquet writer at once.
const MAX_CHUNK_ROWS: usize = 8192;

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

    /// Each row's partition value under `year(ts)`, `month(ts)` and `hour(ts)` (a table
    /// each: Iceberg refuses two time transforms of one column), read from the data files
    /// written.
    #[tokio::test]
    async fn time_transforms_put_each_row_in_its_year_month_and_hour() {
        use arrow::array::{Int64Array, TimestampMillisecondArray};
        use arrow::datatypes::TimeUnit;
        use iceberg::spec::{Literal, PrimitiveLiteral};
        use sluice_core::partition::PartitionField;

        let dir = tempfile::tempdir().unwrap();
        let catalog = sluice_iceberg::catalog::open_catalog(&sluice_core::spec::CatalogSpec {
            catalog_type: "sql".into(),
            uri: format!("sqlite://{}/catalog.db", dir.path().display()),
            warehouse: format!("file://{}/warehouse", dir.path().display()),
            name: None,
            properties: Default::default(),
        })
        .await
        .unwrap();
        let query = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]));
        // 2023-12-31 23:30, 2024-01-01 00:10 and 00:50, 2024-02-01 05:00 (UTC).
        let ts = [
            1_704_065_400_000i64,
            1_704_067_800_000,
            1_704_070_200_000,
            1_706_763_600_000,
        ];
        let batch = RecordBatch::try_new(
            query.clone(),
            vec![
                Arc::new(Int64Array::from(vec![0, 1, 2, 3])),
                Arc::new(TimestampMillisecondArray::from(ts.to_vec())),
            ],
        )
        .unwrap();
        let hour = |ms: i64| (ms / 3_600_000) as i32;
        // Years since 1970, months since 1970-01, hours since the epoch: (value, rows).
        for (transform, expected) in [
            ("year", vec![(53, 1), (54, 3)]),
            (
                "month",
                vec![(53 * 12 + 11, 1), (54 * 12, 2), (54 * 12 + 1, 1)],
            ),
            (
                "hour",
                vec![(hour(ts[0]), 1), (hour(ts[1]), 2), (hour(ts[3]), 1)],
            ),
        ] {
            let field = PartitionField::parse(&format!("{transform}(ts)")).unwrap();
            let ident = iceberg::TableIdent::from_strs(["ns", transform]).unwrap();
            let table =
                sluice_iceberg::sink::ensure_table(catalog.as_ref(), &ident, &query, &[field])
                    .await
                    .unwrap();
            let table_schema = sluice_iceberg::sink::table_arrow_schema(&table).unwrap();
            let files = write_data_files(
                &table,
                &table_schema,
                std::slice::from_ref(&batch),
                "t".into(),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
            let mut partitions: Vec<(i32, u64)> = files
                .iter()
                .map(|f| match &f.partition().fields()[0] {
                    Some(Literal::Primitive(PrimitiveLiteral::Int(v))) => (*v, f.record_count()),
                    other => panic!("{transform}: not an int partition value: {other:?}"),
                })
                .collect();
            partitions.sort();
            assert_eq!(partitions, expected, "{transform}(ts)");
        }
    }
}
