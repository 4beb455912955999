//! The checks of a whole spec: each part checks itself (the source, its event time, the
//! sink, the trigger, the parallelism); the checks here span parts or are shared.

use std::collections::HashSet;

use super::source::SOURCE_TABLE;
use super::{JobSpec, WINDOW_END_COLUMN, WINDOW_START_COLUMN};
use crate::error::{Error, Result};

impl JobSpec {
    /// Checks everything that needs no service: each part, and how they fit together.
    pub(super) fn validate(&self) -> Result<()> {
        validate_identifier("name", &self.name)?;
        self.validate_sources()?;
        let source = self.source();
        source.kafka.validate()?;
        self.event_time().validate(source)?;
        if self.event_time().is_windowed() {
            for column in [WINDOW_START_COLUMN, WINDOW_END_COLUMN] {
                if source.kafka.schema.iter().any(|f| f.name == column) {
                    return Err(Error::spec(
                        format!("source.kafka.schema.{column}"),
                        "the name is taken by a Kafka metadata column",
                    ));
                }
            }
        }
        self.trigger.resolve()?;
        if self.sql.trim().is_empty() {
            return Err(Error::spec("sql", "must not be empty"));
        }
        self.sink.iceberg.validate()?;
        self.parallelism.validate()?;
        self.validate_tables()
    }

    /// One source, named like a table. Several sources come with stream–stream joins.
    fn validate_sources(&self) -> Result<()> {
        let names: Vec<&str> = self.sources.keys().map(String::as_str).collect();
        match names.as_slice() {
            [] => Err(Error::spec(
                "sources",
                "names no source; give `source: {kafka: …}` or `sources: {NAME: {kafka: …}}`",
            )),
            [name] => validate_identifier(&format!("sources.{name}"), name),
            several => Err(Error::spec(
                "sources",
                format!(
                    "names {} sources ({}); a job reads one source for now (joins of several streams are not supported yet)",
                    several.len(),
                    several.join(", ")
                ),
            )),
        }
    }

    /// Static tables: named once, not like a source, each with exactly one location.
    fn validate_tables(&self) -> Result<()> {
        let mut names: HashSet<&str> = self.sources.keys().map(String::as_str).collect();
        for (i, table) in self.tables.iter().enumerate() {
            let field = format!("tables[{i}]");
            validate_identifier(&format!("{field}.name"), &table.name)?;
            if table.name == SOURCE_TABLE || !names.insert(table.name.as_str()) {
                return Err(Error::spec(
                    format!("{field}.name"),
                    format!("{:?} is already a table of this job", table.name),
                ));
            }
            match (&table.parquet, &table.iceberg) {
                (Some(path), None) if path.trim().is_empty() => {
                    return Err(Error::spec(format!("{field}.parquet"), "must not be empty"))
                }
                (Some(_), None) => {}
                (None, Some(iceberg)) => {
                    iceberg
                        .catalog
                        .validate(&format!("{field}.iceberg.catalog"))?;
                }
                _ => {
                    return Err(Error::spec(
                        field,
                        "give exactly one of `parquet` (files) or `iceberg` (a table)",
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Names become etcd keys, file names and table identifiers: keep them plain.
/// Longest name, namespace or table: names become etcd keys, file names and metric
/// labels.
pub const MAX_IDENTIFIER_CHARS: usize = 128;

pub(super) fn validate_identifier(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(Error::spec(field, "must not be empty"));
    }
    if value.len() > MAX_IDENTIFIER_CHARS {
        return Err(Error::spec(
            field,
            format!(
                "is {} characters long; at most {MAX_IDENTIFIER_CHARS}",
                value.len()
            ),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::spec(
            field,
            format!("{value:?} contains {bad:?}; use letters, digits, '_' and '-'"),
        ));
    }
    Ok(())
}
