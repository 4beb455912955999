//! The tables a job's SQL sees while the driver plans it: the stream as `source` and the
//! static tables of the spec.

use std::any::Any;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;

use super::nodes::KafkaScanExec;
use sluice_core::error::{Error, Result};
use sluice_core::spec::{DimensionTableSpec, IcebergTableSpec};
use sluice_iceberg::catalog::open_catalog;
use sluice_iceberg::sink::table_arrow_schema;

/// The stream of one micro-batch; scans become [`KafkaScanExec`]s.
#[derive(Debug)]
pub struct SourceTable {
    schema: SchemaRef,
    partitions: usize,
}

impl SourceTable {
    pub fn new(schema: SchemaRef, partitions: usize) -> SourceTable {
        SourceTable { schema, partitions }
    }
}

#[async_trait]
impl TableProvider for SourceTable {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => self.schema.clone(),
        };
        Ok(Arc::new(KafkaScanExec::new(schema, self.partitions)))
    }
}

/// Registers the spec's static tables in `ctx`.
pub async fn register_static_tables(
    ctx: &SessionContext,
    tables: &[DimensionTableSpec],
) -> Result<()> {
    for (i, table) in tables.iter().enumerate() {
        let provider = match (&table.parquet, &table.iceberg) {
            (Some(path), _) => {
                parquet_table(
                    ctx,
                    std::slice::from_ref(path),
                    &format!("tables[{i}].parquet"),
                )
                .await?
            }
            (None, Some(iceberg)) => iceberg_table(ctx, iceberg, i).await?,
            (None, None) => continue,
        };
        ctx.register_table(table.name.as_str(), provider)
            .map_err(sluice_core::Error::query)?;
    }
    Ok(())
}

async fn parquet_table(
    ctx: &SessionContext,
    paths: &[String],
    field: &str,
) -> Result<Arc<dyn TableProvider>> {
    let urls = paths
        .iter()
        .map(|path| {
            let local = path.strip_prefix("file://").unwrap_or(path);
            if !local.contains("://") && !std::path::Path::new(local).exists() {
                return Err(Error::spec(field, format!("{path} does not exist")));
            }
            let url = if path.contains("://") {
                path.clone()
            } else {
                let absolute =
                    std::path::absolute(path).map_err(|e| Error::spec(field, e.to_string()))?;
                absolute.to_string_lossy().into_owned()
            };
            ListingTableUrl::parse(&url).map_err(|e| Error::spec(field, e.strip_backtrace()))
        })
        .collect::<Result<Vec<_>>>()?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_collect_stat(true);
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .map_err(|e| {
            Error::spec(
                field,
                format!("reading Parquet files: {}", e.strip_backtrace()),
            )
        })?;
    Ok(Arc::new(
        ListingTable::try_new(config).map_err(sluice_core::Error::query)?,
    ))
}

/// An Iceberg table as the Parquet data files of its current snapshot (tables without
/// delete files, as Sluice writes them).
async fn iceberg_table(
    ctx: &SessionContext,
    spec: &IcebergTableSpec,
    i: usize,
) -> Result<Arc<dyn TableProvider>> {
    let field = format!("tables[{i}].iceberg");
    let catalog = open_catalog(&spec.catalog).await?;
    let ident = iceberg::TableIdent::from_strs([spec.namespace.as_str(), spec.table.as_str()])
        .map_err(|e| Error::spec(&field, e.to_string()))?;
    let table = catalog
        .load_table(&ident)
        .await
        .map_err(|e| Error::spec(&field, format!("loading table {ident}: {e}")))?;
    let files: Vec<String> = table
        .scan()
        .build()
        .map_err(|e| Error::spec(&field, e.to_string()))?
        .plan_files()
        .await
        .map_err(|e| Error::spec(&field, e.to_string()))?
        .map_ok(|task| task.data_file_path().to_string())
        .try_collect()
        .await
        .map_err(|e| Error::spec(&field, e.to_string()))?;
    if files.is_empty() {
        let schema = table_arrow_schema(&table)?;
        return Ok(Arc::new(
            MemTable::try_new(schema, vec![vec![]]).map_err(sluice_core::Error::query)?,
        ));
    }
    parquet_table(ctx, &files, &field).await
}
