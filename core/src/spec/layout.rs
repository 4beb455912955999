//! The places a spec may write settings besides today's: `source:` for a job's one
//! source, and the event-time settings inside `source.kafka` as specs (and the job
//! records kept in a checkpoint store) wrote them before sources had their own event time.
//! [`to_current`] moves them where [`super::JobSpec`] keeps them.

use serde_yaml_ng::{Mapping, Value};

use super::source::SOURCE_TABLE;
use crate::error::{Error, Result};

/// The settings `source.kafka` held before they moved beside the source.
const SOURCE_SETTINGS: [&str; 1] = ["watermark"];
/// The settings `source.kafka` held before they moved to the job.
const JOB_SETTINGS: [&str; 3] = ["window", "session", "dedup"];

/// Rewrites `spec` into today's layout: `source: S` becomes `sources: {source: S}`, and
/// `watermark`, `window`, `session` and `dedup` found in a source's `kafka` move beside
/// the source and to the job. Returns whether anything moved; fails when a setting is
/// given in both places.
pub(super) fn to_current(spec: &mut Value) -> Result<bool> {
    let Some(job) = spec.as_mapping_mut() else {
        return Ok(false);
    };
    let mut moved = false;
    if let Some(source) = job.remove("source") {
        if job.contains_key("sources") {
            return Err(Error::spec(
                "source",
                "give `source` (one source) or `sources` (named sources), not both",
            ));
        }
        let mut sources = Mapping::new();
        sources.insert(SOURCE_TABLE.into(), source);
        job.insert("sources".into(), Value::Mapping(sources));
        moved = true;
    }
    let mut to_job = Vec::new();
    if let Some(Value::Mapping(sources)) = job.get_mut("sources") {
        for (name, source) in sources.iter_mut() {
            let name = name.as_str().unwrap_or("?").to_string();
            let Some(source) = source.as_mapping_mut() else {
                continue;
            };
            let Some(Value::Mapping(kafka)) = source.get_mut("kafka") else {
                continue;
            };
            let beside: Vec<(String, Value)> = take(kafka, &SOURCE_SETTINGS);
            to_job.extend(
                take(kafka, &JOB_SETTINGS)
                    .into_iter()
                    .map(|(key, value)| (name.clone(), key, value)),
            );
            for (key, value) in beside {
                if source.contains_key(key.as_str()) {
                    return Err(twice(&format!("{}.{key}", path(&name)), &name));
                }
                source.insert(key.into(), value);
                moved = true;
            }
        }
    }
    for (source, key, value) in to_job {
        if job.contains_key(key.as_str()) {
            return Err(twice(&key, &source));
        }
        job.insert(key.into(), value);
        moved = true;
    }
    Ok(moved)
}

/// Removes `keys` from `kafka`, with their values.
fn take(kafka: &mut Mapping, keys: &[&str]) -> Vec<(String, Value)> {
    keys.iter()
        .filter_map(|key| Some((key.to_string(), kafka.remove(*key)?)))
        .collect()
}

/// Where a source sits in the spec: `source` for the shorthand, `sources.NAME` otherwise.
fn path(name: &str) -> String {
    if name == SOURCE_TABLE {
        SOURCE_TABLE.to_string()
    } else {
        format!("sources.{name}")
    }
}

fn twice(field: &str, source: &str) -> Error {
    Error::spec(
        field,
        format!(
            "is given twice: here and in {}.kafka; keep the one here",
            path(source)
        ),
    )
}
