//! Listing files by name prefix where a table keeps them: the local file system or
//! S3-compatible object storage. Iceberg's FileIO reads, writes and deletes but cannot
//! list; clean-up needs to find the files a crashed attempt left behind.

use std::collections::BTreeMap;

use iceberg::io::{S3Config, StorageConfig};
use opendal::services::S3;
use opendal::Operator;

use sluice_core::error::{Error, Result};

/// Full paths of the files in directory `dir` (a `file://` or `s3://` URL, or an absolute
/// path) or any directory below it (a partitioned table's `data/country=DE/…`) whose
/// names start with `prefix`. `properties` are the catalog's FileIO
/// properties (`s3.endpoint`, credentials, …). A missing directory holds no files.
pub async fn list_with_prefix(
    dir: &str,
    prefix: &str,
    properties: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let dir = dir.trim_end_matches('/');
    if let Some(path) = dir
        .strip_prefix("file://")
        .or_else(|| dir.strip_prefix("file:"))
    {
        return list_local(path, prefix);
    }
    if dir.starts_with('/') {
        return list_local(dir, prefix);
    }
    let (scheme, rest) = dir.split_once("://").ok_or_else(|| unsupported(dir))?;
    if !matches!(scheme, "s3" | "s3a" | "s3n") {
        return Err(unsupported(dir));
    }
    let (bucket, key_dir) = rest.split_once('/').unwrap_or((rest, ""));
    let operator = s3_operator(bucket, properties).map_err(|e| listing_error(dir, e))?;
    let key_dir = if key_dir.is_empty() {
        String::new()
    } else {
        format!("{key_dir}/")
    };
    let entries = operator
        .list_with(&key_dir)
        .recursive(true)
        .await
        .map_err(|e| listing_error(dir, e))?;
    Ok(entries
        .into_iter()
        .filter(|entry| entry.metadata().is_file() && entry.name().starts_with(prefix))
        .map(|entry| format!("{scheme}://{bucket}/{}", entry.path()))
        .collect())
}

fn list_local(dir: &str, prefix: &str) -> Result<Vec<String>> {
    let mut found = vec![];
    let mut dirs = vec![std::path::PathBuf::from(dir)];
    while let Some(dir) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io {
                    context: format!("listing {}", dir.display()),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if entry.file_name().to_string_lossy().starts_with(prefix) {
                found.push(format!("file://{}", entry.path().display()));
            }
        }
    }
    Ok(found)
}

/// An operator on `bucket` configured from Iceberg's S3 FileIO properties, as the data
/// files were written with.
fn s3_operator(bucket: &str, properties: &BTreeMap<String, String>) -> opendal::Result<Operator> {
    let props = properties.iter().map(|(k, v)| (k.clone(), v.clone()));
    let config = S3Config::try_from(&StorageConfig::from_props(props.collect()))
        .map_err(|e| opendal::Error::new(opendal::ErrorKind::ConfigInvalid, e.to_string()))?;
    let mut builder = S3::default().bucket(bucket).root("/");
    let settings = [
        (
            config.endpoint.as_deref(),
            S3::endpoint as fn(S3, &str) -> S3,
        ),
        (config.region.as_deref(), S3::region),
        (config.access_key_id.as_deref(), S3::access_key_id),
        (config.secret_access_key.as_deref(), S3::secret_access_key),
        (config.session_token.as_deref(), S3::session_token),
    ];
    for (value, set) in settings {
        if let Some(value) = value {
            builder = set(builder, value);
        }
    }
    if config.enable_virtual_host_style {
        builder = builder.enable_virtual_host_style();
    }
    if config.allow_anonymous {
        builder = builder.skip_signature();
    }
    if config.disable_ec2_metadata {
        builder = builder.disable_ec2_metadata();
    }
    if config.disable_config_load {
        builder = builder.disable_config_load();
    }
    Ok(Operator::new(builder)?.finish())
}

fn unsupported(dir: &str) -> Error {
    Error::Storage {
        location: dir.to_string(),
        message: "only file:// and s3:// locations can be listed".into(),
    }
}

fn listing_error(dir: &str, error: impl std::fmt::Display) -> Error {
    Error::Storage {
        location: dir.to_string(),
        message: error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_listing_finds_files_by_prefix_and_tolerates_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "j.b1.t0.parquet",
            "country=DE/j.b1.t1.parquet",
            "j.b10.t0.parquet",
        ] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let url = format!("file://{}", dir.path().display());
        let mut found = list_with_prefix(&url, "j.b1.", &BTreeMap::new())
            .await
            .unwrap();
        found.sort();
        assert_eq!(
            found,
            vec![
                format!("{url}/country=DE/j.b1.t1.parquet"),
                format!("{url}/j.b1.t0.parquet"),
            ],
            "files in partition directories too"
        );
        let missing = format!("{url}/nothing-here");
        assert!(list_with_prefix(&missing, "j", &BTreeMap::new())
            .await
            .unwrap()
            .is_empty());
        assert!(list_with_prefix("hdfs://nn/x", "j", &BTreeMap::new())
            .await
            .is_err());
    }
}
