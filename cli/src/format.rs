//! How jobs and batches look on a terminal.

use sluice_proto::v1::{BatchProgress, JobStatus, TableDescription};

/// Groups digits by thousands: 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per committed batch.
pub fn batch_line(p: &BatchProgress) -> String {
    let lag: i64 = p
        .partitions
        .iter()
        .map(|part| (part.latest_offset - part.end_offset).max(0))
        .sum();
    let mut line = format!(
        "batch {:>4}  rows {:>9}  out {:>9}  {:>9} rows/s  took {:>5} ms (plan {} · exec {} · commit {} · ckpt {})  lag {}",
        p.batch_id,
        thousands(p.input_rows),
        thousands(p.output_rows),
        thousands(p.input_rows_per_second.round() as u64),
        p.duration_ms,
        p.plan_ms,
        p.execute_ms,
        p.commit_ms,
        p.checkpoint_ms,
        thousands(lag as u64),
    );
    if p.offsets_lost > 0 {
        line.push_str(&format!(
            "  LOST {} offsets (retention)",
            thousands(p.offsets_lost)
        ));
    }
    if p.malformed_skipped > 0 {
        line.push_str(&format!("  skipped {}", thousands(p.malformed_skipped)));
    }
    if let Some(ms) = p.watermark_ms {
        line.push_str(&format!("  watermark {}", format_ms(ms)));
        if !p.watermark_partition.is_empty() {
            line.push_str(&format!(" (held by {})", p.watermark_partition));
        }
        if !p.idle_partitions.is_empty() {
            line.push_str(&format!(" idle {}", p.idle_partitions.join(",")));
        }
    }
    if p.state_rows > 0 {
        line.push_str(&format!(
            "  state {} rows ({} KiB, wrote {} KiB)",
            thousands(p.state_rows),
            thousands(p.state_bytes / 1024),
            thousands(p.state_bytes_written / 1024)
        ));
    }
    if p.late_records > 0 {
        line.push_str(&format!("  late {}", thousands(p.late_records)));
    }
    if p.executor_crashes > 0 {
        line.push_str(&format!("  CRASHED {} executors", p.executor_crashes));
    }
    line
}

/// A time in ms since the epoch as UTC `HH:MM:SS.mmm`.
fn format_ms(ms: i64) -> String {
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// A job's table, several lines.
pub fn table_block(t: &TableDescription) -> String {
    let partitioning = if t.partition_fields.is_empty() {
        "unpartitioned".to_string()
    } else {
        t.partition_fields.join(", ")
    };
    let average = t.total_bytes.checked_div(t.data_files).unwrap_or(0);
    let mut out = format!(
        "table {}\n  location: {}\n  partitioning: {partitioning}\n  data files: {} ({} bytes, {} on average)\n  records: {}\n  snapshots: {}\n",
        t.table,
        t.location,
        thousands(t.data_files),
        thousands(t.total_bytes),
        thousands(average),
        thousands(t.total_records),
        thousands(t.snapshots),
    );
    if !t.recent_snapshots.is_empty() {
        out.push_str("  latest snapshots:\n");
    }
    for s in &t.recent_snapshots {
        let batch = if s.batch_id < 0 {
            "-".to_string()
        } else {
            s.batch_id.to_string()
        };
        out.push_str(&format!(
            "    {}  {:<9} batch {:>5}  +{} files  +{} records  ({})\n",
            s.snapshot_id,
            s.operation,
            batch,
            thousands(s.added_files),
            thousands(s.added_records),
            format_ms(s.timestamp_ms)
        ));
    }
    out
}

/// A job's status, several lines.
pub fn status_block(s: &JobStatus) -> String {
    let mut out = format!(
        "job {}\n  state: {}\n  table: {}\n  last committed batch: {}\n  rows written: {}\n",
        s.job_id,
        s.state,
        s.table,
        if s.last_committed_batch < 0 {
            "none".to_string()
        } else {
            s.last_committed_batch.to_string()
        },
        thousands(s.total_rows)
    );
    if !s.message.is_empty() {
        out.push_str(&format!("  message: {}\n", s.message));
    }
    if !s.recent_batches.is_empty() {
        out.push_str("  recent batches:\n");
        for batch in &s.recent_batches {
            out.push_str(&format!("    {}\n", batch_line(batch)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_line_names_the_partition_holding_the_watermark_and_the_idle_ones() {
        let mut p = BatchProgress {
            watermark_ms: Some(12 * 3_600_000 + 5_000),
            watermark_partition: "orders/3".into(),
            ..BatchProgress::default()
        };
        let line = batch_line(&p);
        assert!(
            line.contains("watermark 12:00:05.000Z (held by orders/3)"),
            "{line}"
        );
        assert!(!line.contains("idle"), "{line}");
        p.idle_partitions = vec!["orders/1".into(), "orders/2".into()];
        assert!(batch_line(&p).contains(" idle orders/1,orders/2"));
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
