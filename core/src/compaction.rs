//! `sink.iceberg.compaction`: how the driver keeps the sink table's data files few and
//! large while it streams. See docs/architecture.md, "Compaction".

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Files of about the same size in one partition that make a rewrite, by default.
pub const DEFAULT_MIN_FILES: u32 = 16;
/// How long a compaction may hold the next batch back, by default.
pub const DEFAULT_BUDGET: &str = "10s";
/// Bytes one compaction reads at most, by default.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;

/// `sink.iceberg.compaction`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionSpec {
    /// Whether the driver compacts between batches (default true).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// A partition's files of about the same size (within a factor of `min_files`) are
    /// rewritten into one once there are this many (default 16, at least 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_files: Option<u32>,
    /// The longest a compaction may hold the next batch back, e.g. `10s` (default); a
    /// rewrite that takes longer is abandoned and its files deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Bytes one compaction reads at most (default 1 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for CompactionSpec {
    fn default() -> Self {
        CompactionSpec {
            enabled: true,
            min_files: None,
            budget: None,
            max_bytes: None,
        }
    }
}

impl CompactionSpec {
    /// Whether the spec leaves everything at its default (not written out).
    pub fn is_default(&self) -> bool {
        self == &CompactionSpec::default()
    }

    pub fn min_files(&self) -> u32 {
        self.min_files.unwrap_or(DEFAULT_MIN_FILES)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }

    /// The budget in milliseconds.
    pub fn budget_ms(&self) -> Result<i64> {
        let text = self.budget.as_deref().unwrap_or(DEFAULT_BUDGET);
        crate::durations::positive_ms("sink.iceberg.compaction.budget", text)
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        self.budget_ms()?;
        if self.min_files() < 2 {
            return Err(Error::spec(
                "sink.iceberg.compaction.min_files",
                "must be at least 2 (a rewrite merges files)",
            ));
        }
        if self.max_bytes() == 0 {
            return Err(Error::spec(
                "sink.iceberg.compaction.max_bytes",
                "must be above zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_settings() {
        let spec = CompactionSpec::default();
        assert!(spec.enabled && spec.is_default());
        assert_eq!((spec.min_files(), spec.budget_ms().unwrap()), (16, 10_000));
        for (bad, why) in [
            (
                CompactionSpec {
                    min_files: Some(1),
                    ..Default::default()
                },
                "at least 2",
            ),
            (
                CompactionSpec {
                    budget: Some("soon".into()),
                    ..Default::default()
                },
                "not a duration",
            ),
            (
                CompactionSpec {
                    budget: Some("0s".into()),
                    ..Default::default()
                },
                "above zero",
            ),
            (
                CompactionSpec {
                    max_bytes: Some(0),
                    ..Default::default()
                },
                "above zero",
            ),
        ] {
            let message = bad.validate().unwrap_err().to_string();
            assert!(message.contains(why), "{message}");
        }
    }
}
