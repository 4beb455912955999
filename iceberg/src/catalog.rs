//! Opening the Iceberg catalog a spec names: a SQL catalog on SQLite or a REST catalog,
//! with the warehouse on the local file system or on S3-compatible object storage.
//!
//! Data and metadata files go through iceberg's FileIO with OpenDAL storage, chosen per
//! path by its scheme (`file://`, `s3://`, `s3a://`); the spec's catalog `properties`
//! (`s3.endpoint`, `s3.region`, `s3.access-key-id`, …) configure it, and credentials left
//! out there are taken from the usual AWS environment variables.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::{Catalog, CatalogBuilder};
use iceberg_catalog_rest::{
    RestCatalogBuilder, REST_CATALOG_PROP_URI, REST_CATALOG_PROP_WAREHOUSE,
};
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;

use sluice_core::error::{Error, Result};
use sluice_core::spec::{CatalogKind, CatalogSpec};

/// An open catalog of either kind.
pub type CatalogRef = Arc<dyn Catalog>;

/// Opens the catalog `spec` names. A SQL catalog's database file and a local warehouse
/// are created when absent; a REST catalog is first contacted when used.
pub async fn open_catalog(spec: &CatalogSpec) -> Result<CatalogRef> {
    let props: HashMap<String, String> = spec
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let storage = Arc::new(OpenDalResolvingStorageFactory::new());
    let opened = match spec.validate("catalog")? {
        CatalogKind::Sql => {
            let db_path = sqlite_path(&spec.uri);
            create_dir(std::path::Path::new(db_path).parent())?;
            let warehouse = warehouse_url(&spec.warehouse);
            if let Some(dir) = warehouse.strip_prefix("file://") {
                create_dir(Some(std::path::Path::new(dir)))?;
            }
            let uri = if spec.uri.contains('?') {
                spec.uri.clone()
            } else {
                format!("{}?mode=rwc", spec.uri)
            };
            SqlCatalogBuilder::default()
                .uri(uri)
                .warehouse_location(warehouse)
                .sql_bind_style(SqlBindStyle::QMark)
                .props(props)
                .with_storage_factory(storage)
                .load(spec.name(), HashMap::new())
                .await
                .map(|catalog| Arc::new(catalog) as CatalogRef)
        }
        CatalogKind::Rest => {
            let mut props = props;
            props.insert(REST_CATALOG_PROP_URI.to_string(), spec.uri.clone());
            if !spec.warehouse.is_empty() {
                props.insert(
                    REST_CATALOG_PROP_WAREHOUSE.to_string(),
                    warehouse_url(&spec.warehouse),
                );
            }
            RestCatalogBuilder::default()
                .with_storage_factory(storage)
                .load(spec.name(), props)
                .await
                .map(|catalog| Arc::new(catalog) as CatalogRef)
        }
    };
    opened.map_err(Error::iceberg(format!("opening catalog {}", spec.uri)))
}

/// The database file of a SQLite URI (`sqlite:///abs/path.db?mode=rwc` -> `/abs/path.db`).
fn sqlite_path(uri: &str) -> &str {
    let path = uri
        .strip_prefix("sqlite://")
        .or_else(|| uri.strip_prefix("sqlite:"))
        .unwrap_or(uri);
    path.split('?').next().unwrap_or(path)
}

fn create_dir(dir: Option<&std::path::Path>) -> Result<()> {
    match dir {
        Some(dir) if !dir.as_os_str().is_empty() => {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                context: format!("creating {}", dir.display()),
                source,
            })
        }
        _ => Ok(()),
    }
}

/// A warehouse as a URL: a bare absolute path becomes `file://…`.
fn warehouse_url(warehouse: &str) -> String {
    if warehouse.starts_with('/') {
        format!("file://{warehouse}")
    } else {
        warehouse.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_uris_name_their_database_file() {
        assert_eq!(sqlite_path("sqlite:///var/c.db?mode=rwc"), "/var/c.db");
        assert_eq!(sqlite_path("sqlite:/var/c.db"), "/var/c.db");
        assert_eq!(warehouse_url("/wh"), "file:///wh");
        assert_eq!(warehouse_url("s3://bucket/wh"), "s3://bucket/wh");
    }
}
