//! A table at a glance, from its metadata alone (no manifest is read): what the current
//! snapshot holds, how the table is partitioned, and its latest snapshots.

use iceberg::table::Table;

use crate::commit::BATCH_ID_PROPERTY;

/// What `sluice table` shows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableOverview {
    pub location: String,
    /// Partition fields as `transform(column)`; empty when unpartitioned.
    pub partition_fields: Vec<String>,
    pub snapshots: u64,
    pub data_files: u64,
    pub total_bytes: u64,
    pub total_records: u64,
    /// The latest snapshots, newest first.
    pub recent: Vec<SnapshotOverview>,
}

/// One snapshot as `sluice table` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SnapshotOverview {
    pub snapshot_id: i64,
    pub timestamp_ms: i64,
    pub operation: String,
    /// The Sluice batch it holds, when a Sluice job wrote it.
    pub batch_id: Option<i64>,
    pub added_files: u64,
    pub added_records: u64,
}

/// The overview of `table` with its `recent` latest snapshots.
pub fn table_overview(table: &Table, recent: usize) -> TableOverview {
    let metadata = table.metadata();
    let summary_number = |properties: &std::collections::HashMap<String, String>, key: &str| {
        properties
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let current = metadata
        .current_snapshot()
        .map(|s| s.summary().additional_properties.clone())
        .unwrap_or_default();
    let schema = metadata.current_schema();
    let partition_fields = metadata
        .default_partition_spec()
        .fields()
        .iter()
        .map(|field| {
            let column = schema
                .field_by_id(field.source_id)
                .map_or_else(|| field.name.clone(), |f| f.name.clone());
            format!("{}({column})", field.transform)
        })
        .collect();
    let mut snapshots: Vec<_> = metadata.snapshots().collect();
    snapshots.sort_by_key(|s| std::cmp::Reverse((s.timestamp_ms(), s.snapshot_id())));
    TableOverview {
        location: metadata.location().to_string(),
        partition_fields,
        snapshots: snapshots.len() as u64,
        data_files: summary_number(&current, "total-data-files"),
        total_bytes: summary_number(&current, "total-files-size"),
        total_records: summary_number(&current, "total-records"),
        recent: snapshots
            .into_iter()
            .take(recent)
            .map(|s| {
                let properties = &s.summary().additional_properties;
                SnapshotOverview {
                    snapshot_id: s.snapshot_id(),
                    timestamp_ms: s.timestamp_ms(),
                    operation: s.summary().operation.as_str().to_string(),
                    batch_id: properties
                        .get(BATCH_ID_PROPERTY)
                        .and_then(|b| b.parse().ok()),
                    added_files: summary_number(properties, "added-data-files"),
                    added_records: summary_number(properties, "added-records"),
                }
            })
            .collect(),
    }
}
