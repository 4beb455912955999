//! The Iceberg side of a job: the sink table, data-file exchange between
//! executors and the driver, and the per-batch snapshot commit.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema as ArrowSchema, SchemaRef, TimeUnit};
use iceberg::spec::{DataFile, Schema, Transform};
use iceberg::table::Table;
use iceberg::{Catalog, NamespaceIdent, TableCreation, TableIdent};

use sluice_core::error::{Error, Result};
use sluice_core::partition::{PartitionField, PartitionTransform};
use sluice_core::spec::IcebergSinkSpec;

pub use crate::commit::{BATCH_ID_PROPERTY, JOB_ID_PROPERTY};

/// The identifier of a sink's dead-letter table.
pub fn dead_letter_ident(sink: &IcebergSinkSpec) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(sink.namespace.clone()),
        sink.dead_letter_table(),
    )
}

/// The identifier of a sink's table.
pub fn table_ident(sink: &IcebergSinkSpec) -> TableIdent {
    TableIdent::new(
        NamespaceIdent::new(sink.namespace.clone()),
        sink.table.clone(),
    )
}

/// The Arrow type a query column is stored as: the nearest type Iceberg has.
fn storable_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 | DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
        DataType::Date64 => DataType::Date32,
        DataType::Null => DataType::Utf8,
        DataType::Struct(fields) => DataType::Struct(Fields::from(
            fields
                .iter()
                .map(|f| Field::new(f.name(), storable_type(f.data_type()), true))
                .collect::<Vec<_>>(),
        )),
        other => other.clone(),
    }
}

/// The Iceberg schema for a query's output: storable types, every column optional.
pub fn iceberg_schema_for(output: &ArrowSchema) -> Result<Schema> {
    let fields: Vec<Field> = output
        .fields()
        .iter()
        .map(|f| Field::new(f.name(), storable_type(f.data_type()), true))
        .collect();
    iceberg::arrow::arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(fields)).map_err(|e| {
        Error::InvalidSql {
            message: format!("the query's output cannot be stored in Iceberg: {e}"),
        }
    })
}

/// Creates the sink table from the query's output schema, partitioned by `partition_by`,
/// or checks an existing one (whose partitioning, if any, stays as it is).
pub async fn ensure_table(
    catalog: &dyn Catalog,
    ident: &TableIdent,
    output: &ArrowSchema,
    partition_by: &[PartitionField],
) -> Result<Table> {
    let ident = ident.clone();
    let wanted = iceberg_schema_for(output)?;
    let namespace = ident.namespace().clone();
    let exists = catalog
        .namespace_exists(&namespace)
        .await
        .map_err(Error::iceberg(format!("checking namespace of {ident}")))?;
    if !exists {
        catalog
            .create_namespace(&namespace, HashMap::new())
            .await
            .map_err(Error::iceberg(format!("creating namespace of {ident}")))?;
    }
    let table_exists = catalog
        .table_exists(&ident)
        .await
        .map_err(Error::iceberg(format!("checking table {ident}")))?;
    if !table_exists {
        let partition_spec = partition_spec_for(&wanted, partition_by)?;
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(wanted)
            .partition_spec(partition_spec)
            .build();
        return catalog
            .create_table(&namespace, creation)
            .await
            .map_err(Error::iceberg(format!("creating table {ident}")));
    }
    let table = catalog
        .load_table(&ident)
        .await
        .map_err(Error::iceberg(format!("loading table {ident}")))?;
    check_compatible(&ident, &table, &wanted)?;
    Ok(table)
}

fn check_compatible(ident: &TableIdent, table: &Table, wanted: &Schema) -> Result<()> {
    let mismatch = |message: String| Error::SchemaMismatch {
        table: ident.to_string(),
        message,
    };
    let existing = table.metadata().current_schema();
    for field in wanted.as_struct().fields() {
        match existing.field_by_name(&field.name) {
            None => {
                return Err(mismatch(format!(
                    "the query produces column {} which the table lacks",
                    field.name
                )))
            }
            Some(have) if have.field_type != field.field_type => {
                return Err(mismatch(format!(
                    "column {} is {} in the table but {} in the query",
                    field.name, have.field_type, field.field_type
                )))
            }
            Some(_) => {}
        }
    }
    for field in existing.as_struct().fields() {
        if field.required && wanted.field_by_name(&field.name).is_none() {
            return Err(mismatch(format!(
                "required column {} is not produced by the query",
                field.name
            )));
        }
    }
    Ok(())
}

/// The partition spec `partition_by` asks for over `schema`; a transform that does not
/// fit its column (e.g. `day` of a string) fails naming both.
fn partition_spec_for(
    schema: &Schema,
    partition_by: &[PartitionField],
) -> Result<iceberg::spec::UnboundPartitionSpec> {
    let invalid = |field: &PartitionField, message: String| Error::InvalidSpec {
        field: "sink.iceberg.partition_by".into(),
        message: format!("{field}: {message}"),
    };
    let mut builder = iceberg::spec::PartitionSpec::builder(schema.clone());
    for field in partition_by {
        if schema.field_by_name(&field.column).is_none() {
            return Err(invalid(
                field,
                format!("the query produces no column {}", field.column),
            ));
        }
        builder = builder
            .add_partition_field(&field.column, field.name(), transform_of(field.transform))
            .map_err(|e| invalid(field, e.message().to_string()))?;
    }
    let spec = builder.build().map_err(|e| Error::InvalidSpec {
        field: "sink.iceberg.partition_by".into(),
        message: e.message().to_string(),
    })?;
    Ok(spec.into_unbound())
}

fn transform_of(transform: PartitionTransform) -> Transform {
    match transform {
        PartitionTransform::Identity => Transform::Identity,
        PartitionTransform::Year => Transform::Year,
        PartitionTransform::Month => Transform::Month,
        PartitionTransform::Day => Transform::Day,
        PartitionTransform::Hour => Transform::Hour,
        PartitionTransform::Bucket(n) => Transform::Bucket(n),
        PartitionTransform::Truncate(w) => Transform::Truncate(w),
    }
}

/// The table's schema as Arrow, with Iceberg field ids, for writing data files.
pub fn table_arrow_schema(table: &Table) -> Result<SchemaRef> {
    let schema = iceberg::arrow::schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(Error::iceberg("converting the table schema to Arrow"))?;
    Ok(Arc::new(schema))
}

/// Serializes data files for the trip from executor to driver.
pub fn data_files_to_json(table: &Table, files: Vec<DataFile>) -> Result<Vec<String>> {
    let metadata = table.metadata();
    files
        .into_iter()
        .map(|file| {
            iceberg::spec::serialize_data_file_to_json(
                file,
                metadata.default_partition_type(),
                metadata.format_version(),
            )
            .map_err(Error::iceberg("serializing a data file"))
        })
        .collect()
}

/// Deserializes data files sent by executors.
pub fn data_files_from_json(table: &Table, files: &[String]) -> Result<Vec<DataFile>> {
    let metadata = table.metadata();
    files
        .iter()
        .map(|json| {
            iceberg::spec::deserialize_data_file_from_json(
                json,
                metadata.default_partition_spec_id(),
                metadata.default_partition_type(),
                metadata.current_schema(),
            )
            .map_err(Error::iceberg("deserializing a data file"))
        })
        .collect()
}

/// Snapshots a table keeps after expiry: enough for recovery, which looks
/// only for the batch planned last, and for readers' time travel over recent batches.
pub const SNAPSHOTS_RETAINED: usize = 100;
/// Expiry runs once this many snapshots more than [`SNAPSHOTS_RETAINED`] accumulated.
pub const SNAPSHOTS_EXPIRY_SLACK: usize = 50;

/// Whether `table` has accumulated enough snapshots for expiry to run.
pub fn needs_expiry(table: &Table) -> bool {
    table.metadata().snapshots().len() > SNAPSHOTS_RETAINED + SNAPSHOTS_EXPIRY_SLACK
}

/// Total rows in the table's current snapshot (from its summary).
pub fn total_records(table: &Table) -> u64 {
    table
        .metadata()
        .current_snapshot()
        .and_then(|s| s.summary().additional_properties.get("total-records"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use arrow::datatypes::{DataType, Field, Schema as ArrowSchema};
    use iceberg::spec::{DataContentType, DataFileBuilder, DataFileFormat};

    use super::*;
    use crate::catalog::open_catalog;
    use crate::commit::{append_batch_on, expire_snapshots_on, find_batch_in_ancestry, CasOutcome};
    use sluice_core::spec::CatalogSpec;
    use sluice_core::BatchId;

    pub(crate) fn data_file(table: &Table, name: &str) -> DataFile {
        data_file_of_rows(table, name, 10)
    }

    /// Data file `name` of `table` holding `rows` rows (10 bytes each).
    pub(crate) fn data_file_of_rows(table: &Table, name: &str, rows: u64) -> DataFile {
        DataFileBuilder::default()
            .content(DataContentType::Data)
            .file_path(format!(
                "{}/data/{name}.parquet",
                table.metadata().location()
            ))
            .file_format(DataFileFormat::Parquet)
            .record_count(rows)
            .file_size_in_bytes(rows * 10)
            .build()
            .unwrap()
    }

    /// `table` after batch `batch` of job `j` was appended, one data file per name.
    pub(crate) async fn appended(
        catalog: &crate::catalog::CatalogRef,
        table: &Table,
        batch: i64,
        names: &[&str],
    ) -> Table {
        let files = names.iter().map(|name| data_file(table, name)).collect();
        let outcome = append_batch_on(
            catalog.clone(),
            table,
            "j",
            BatchId::new(batch),
            files,
            &Default::default(),
        )
        .await;
        committed(outcome)
    }

    /// `table` after a compaction's replace of the files at the paths `removed` by
    /// `added`, with summary `properties`.
    pub(crate) async fn replaced(
        catalog: &crate::catalog::CatalogRef,
        table: &Table,
        removed: &std::collections::HashSet<String>,
        added: Vec<DataFile>,
        properties: std::collections::HashMap<String, String>,
    ) -> Table {
        let outcome =
            crate::rewrite::replace_files_on(catalog.clone(), table, removed, added, properties)
                .await;
        committed(outcome)
    }

    /// The file names of `files`, sorted.
    pub(crate) fn live_names(files: &[crate::rewrite::LiveFile]) -> Vec<String> {
        let mut names: Vec<String> = files
            .iter()
            .map(|f| crate::data_files::file_name(f.data_file.file_path()).to_string())
            .collect();
        names.sort();
        names
    }

    /// A SQL catalog in `dir` with an empty table `ns.t`.
    pub(crate) async fn new_table(dir: &tempfile::TempDir) -> (crate::catalog::CatalogRef, Table) {
        let spec = CatalogSpec {
            catalog_type: "sql".into(),
            uri: format!("sqlite://{}/catalog.db", dir.path().display()),
            warehouse: format!("file://{}/warehouse", dir.path().display()),
            name: None,
            properties: Default::default(),
        };
        let catalog = open_catalog(&spec).await.unwrap();
        let ident = TableIdent::from_strs(["ns", "t"]).unwrap();
        let schema = ArrowSchema::new(vec![Field::new("a", DataType::Int64, true)]);
        let table = ensure_table(catalog.as_ref(), &ident, &schema, &[])
            .await
            .unwrap();
        (catalog, table)
    }

    #[tokio::test]
    async fn expiry_keeps_recent_batches_findable_and_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, mut table) = new_table(&dir).await;
        for batch in 0..8 {
            table = appended(&catalog, &table, batch, &[&format!("b{batch}")]).await;
        }
        assert_eq!(table.metadata().snapshots().len(), 8);
        assert_eq!(total_records(&table), 80);

        let expired = committed(expire_snapshots_on(catalog.clone(), &table, 3).await);
        assert_eq!(expired.metadata().snapshots().len(), 3);
        assert_eq!(total_records(&expired), 80, "expiry keeps every data file");
        assert!(find_batch_in_ancestry(&expired, "j", BatchId::new(7)).is_some());
        assert!(find_batch_in_ancestry(&expired, "j", BatchId::new(5)).is_some());
        assert!(find_batch_in_ancestry(&expired, "j", BatchId::new(4)).is_none());
        // The table keeps committing after expiry.
        let table = appended(&catalog, &expired, 8, &["b8"]).await;
        assert_eq!(total_records(&table), 90);
        assert!(!needs_expiry(&table));
    }

    #[tokio::test]
    async fn a_commit_based_on_a_stale_table_conflicts_instead_of_replaying() {
        let dir = tempfile::tempdir().unwrap();
        let (catalog, stale) = new_table(&dir).await;
        // Another writer commits batch 0 after `stale` was loaded.
        let files = vec![data_file(&stale, "other")];
        let current = committed(
            append_batch_on(
                catalog.clone(),
                &stale,
                "j",
                BatchId::new(0),
                files,
                &Default::default(),
            )
            .await,
        );
        assert!(find_batch_in_ancestry(&stale, "j", BatchId::new(0)).is_none());
        let files = vec![data_file(&stale, "mine")];
        let outcome = append_batch_on(
            catalog.clone(),
            &stale,
            "j",
            BatchId::new(0),
            files,
            &Default::default(),
        )
        .await
        .unwrap();
        assert!(matches!(outcome, CasOutcome::Conflict), "{outcome:?}");
        let reloaded = catalog.load_table(stale.identifier()).await.unwrap();
        assert_eq!(reloaded.metadata_location(), current.metadata_location());
        assert_eq!(reloaded.metadata().snapshots().len(), 1);
        assert!(find_batch_in_ancestry(&reloaded, "j", BatchId::new(0)).is_some());
        // An empty batch still moves the table on.
        let empty = committed(
            append_batch_on(
                catalog.clone(),
                &reloaded,
                "j",
                BatchId::new(1),
                vec![],
                &Default::default(),
            )
            .await,
        );
        assert!(find_batch_in_ancestry(&empty, "j", BatchId::new(1)).is_some());
        assert_eq!(total_records(&empty), 10);
    }

    pub(crate) fn committed(outcome: Result<CasOutcome>) -> Table {
        match outcome.unwrap() {
            CasOutcome::Committed(table) => *table,
            CasOutcome::Conflict => panic!("unexpected commit conflict"),
        }
    }
}
