//! Where a job writes (`sink.iceberg`), and the Iceberg catalogs a spec names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::validate::validate_identifier;
use crate::compaction::CompactionSpec;
use crate::error::{Error, Result};

/// Catalog name used in the SQL catalog, the same as pyiceberg's default.
pub const DEFAULT_CATALOG_NAME: &str = "default";

/// Where a job writes (`sink:`).
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

impl IcebergSinkSpec {
    /// Checks the table's names, its writer settings and its partitioning.
    pub(super) fn validate(&self) -> Result<()> {
        self.catalog.validate("sink.iceberg.catalog")?;
        validate_identifier("sink.iceberg.namespace", &self.namespace)?;
        validate_identifier("sink.iceberg.table", &self.table)?;
        self.parquet.codec()?;
        self.compaction.validate()?;
        if self.target_file_size == Some(0) {
            return Err(Error::spec(
                "sink.iceberg.target_file_size",
                "must be above zero (bytes)",
            ));
        }
        self.partition_fields()?;
        if self.parquet.row_group_rows == Some(0) {
            return Err(Error::spec(
                "sink.iceberg.parquet.row_group_rows",
                "must be above zero",
            ));
        }
        if let Some(table) = &self.dead_letter_table {
            validate_identifier("sink.iceberg.dead_letter_table", table)?;
            if *table == self.table {
                return Err(Error::spec(
                    "sink.iceberg.dead_letter_table",
                    "must differ from sink.iceberg.table",
                ));
            }
        }
        Ok(())
    }
}
