//! Map outputs this executor serves: kept in memory up to a bound, spilled to local disk
//! (Arrow IPC files) beyond it, dropped when their batch is committed or abandoned.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use sluice_plan::ShuffleKey;
use tracing::{debug, warn};

/// One map task's output, all of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MapKey {
    job_id: String,
    batch_id: i64,
    stage_id: u32,
    map_task: u32,
}

impl MapKey {
    fn of(key: &ShuffleKey) -> MapKey {
        MapKey {
            job_id: key.job_id.clone(),
            batch_id: key.batch_id,
            stage_id: key.stage_id,
            map_task: key.map_task,
        }
    }
}

#[derive(Debug)]
enum Stored {
    Memory {
        batches: Vec<RecordBatch>,
        bytes: usize,
    },
    Spilled(PathBuf),
}

#[derive(Debug)]
struct MapOutput {
    schema: SchemaRef,
    partitions: Vec<Stored>,
}

/// Why a map output cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ShuffleStoreError {
    #[error("no output of stage {stage_id} map task {map_task} of batch {batch_id} of job {job_id} here")]
    Missing {
        job_id: String,
        batch_id: i64,
        stage_id: u32,
        map_task: u32,
    },
    #[error("map task {map_task} has no partition {partition}")]
    NoPartition { map_task: u32, partition: u32 },
    #[error("spill file {path}: {source}")]
    Spill {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
}

/// Map outputs by job, batch, stage and map task.
#[derive(Debug)]
pub struct ShuffleStore {
    outputs: Mutex<HashMap<MapKey, MapOutput>>,
    memory_limit: usize,
    memory_used: Mutex<usize>,
    spilled_bytes: std::sync::atomic::AtomicU64,
    spill_dir: PathBuf,
}

impl ShuffleStore {
    /// A store keeping up to `memory_limit` bytes in memory, spilling into `spill_dir`.
    pub fn new(memory_limit: usize, spill_dir: PathBuf) -> ShuffleStore {
        ShuffleStore {
            outputs: Mutex::new(HashMap::new()),
            memory_limit,
            memory_used: Mutex::new(0),
            spilled_bytes: std::sync::atomic::AtomicU64::new(0),
            spill_dir,
        }
    }

    /// Keeps a map task's output, replacing an earlier run's.
    pub fn put(
        &self,
        key: &ShuffleKey,
        schema: SchemaRef,
        partitions: Vec<Vec<RecordBatch>>,
    ) -> Result<(), ShuffleStoreError> {
        let map_key = MapKey::of(key);
        let mut stored = Vec::with_capacity(partitions.len());
        for (partition, batches) in partitions.into_iter().enumerate() {
            let bytes: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
            let fits = {
                let mut used = self.memory_used.lock().expect("memory lock");
                let fits = *used + bytes <= self.memory_limit;
                if fits {
                    *used += bytes;
                }
                fits
            };
            if fits {
                stored.push(Stored::Memory { batches, bytes });
            } else {
                let path = self.spill_path(&map_key, partition);
                spill(&path, &schema, &batches)?;
                self.spilled_bytes
                    .fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
                debug!(path = %path.display(), bytes, "shuffle partition spilled to disk");
                stored.push(Stored::Spilled(path));
            }
        }
        let previous = self.outputs.lock().expect("outputs lock").insert(
            map_key,
            MapOutput {
                schema,
                partitions: stored,
            },
        );
        if let Some(previous) = previous {
            self.free(previous);
        }
        Ok(())
    }

    /// The batches of one partition of a map output, with their schema.
    pub fn get(
        &self,
        key: &ShuffleKey,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), ShuffleStoreError> {
        let spilled = {
            let outputs = self.outputs.lock().expect("outputs lock");
            let output =
                outputs
                    .get(&MapKey::of(key))
                    .ok_or_else(|| ShuffleStoreError::Missing {
                        job_id: key.job_id.clone(),
                        batch_id: key.batch_id,
                        stage_id: key.stage_id,
                        map_task: key.map_task,
                    })?;
            match output.partitions.get(key.partition as usize) {
                Some(Stored::Memory { batches, .. }) => {
                    return Ok((output.schema.clone(), batches.clone()))
                }
                Some(Stored::Spilled(path)) => (output.schema.clone(), path.clone()),
                None => {
                    return Err(ShuffleStoreError::NoPartition {
                        map_task: key.map_task,
                        partition: key.partition,
                    })
                }
            }
        };
        let (schema, path) = spilled;
        Ok((schema, read_spill(&path)?))
    }

    /// Drops every output of `job_id`'s batch `batch_id`.
    pub fn release_batch(&self, job_id: &str, batch_id: i64) {
        self.release(|key| key.job_id == job_id && key.batch_id == batch_id);
    }

    /// Drops `job_id`'s outputs of batches before `batch_id` (they are committed or
    /// abandoned once a later batch runs).
    pub fn release_before(&self, job_id: &str, batch_id: i64) {
        self.release(|key| key.job_id == job_id && key.batch_id < batch_id);
    }

    /// Bytes of map outputs held in memory.
    pub fn memory_used(&self) -> usize {
        *self.memory_used.lock().expect("memory lock")
    }

    /// Bytes of map outputs written to disk since start (their in-memory size).
    pub fn spilled_bytes(&self) -> u64 {
        self.spilled_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn release(&self, matches: impl Fn(&MapKey) -> bool) {
        let released: Vec<MapOutput> = {
            let mut outputs = self.outputs.lock().expect("outputs lock");
            let keys: Vec<MapKey> = outputs.keys().filter(|k| matches(k)).cloned().collect();
            keys.iter().filter_map(|k| outputs.remove(k)).collect()
        };
        for output in released {
            self.free(output);
        }
    }

    fn free(&self, output: MapOutput) {
        for stored in output.partitions {
            match stored {
                Stored::Memory { bytes, .. } => {
                    *self.memory_used.lock().expect("memory lock") -= bytes;
                }
                Stored::Spilled(path) => {
                    if let Err(e) = std::fs::remove_file(&path) {
                        warn!(path = %path.display(), error = %e, "could not delete a spill file");
                    }
                }
            }
        }
    }

    fn spill_path(&self, key: &MapKey, partition: usize) -> PathBuf {
        self.spill_dir.join(format!(
            "{}.b{}.s{}.m{}.p{partition}.{}.arrow",
            key.job_id,
            key.batch_id,
            key.stage_id,
            key.map_task,
            uuid::Uuid::new_v4().simple()
        ))
    }
}

fn spill(
    path: &Path,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<(), ShuffleStoreError> {
    let error = |source| ShuffleStoreError::Spill {
        path: path.to_path_buf(),
        source,
    };
    let file = File::create(path).map_err(|e| error(e.into()))?;
    let mut writer = StreamWriter::try_new(BufWriter::new(file), schema).map_err(error)?;
    for batch in batches {
        writer.write(batch).map_err(error)?;
    }
    writer.finish().map_err(error)
}

fn read_spill(path: &Path) -> Result<Vec<RecordBatch>, ShuffleStoreError> {
    let error = |source| ShuffleStoreError::Spill {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| error(e.into()))?;
    StreamReader::try_new(BufReader::new(file), None)
        .map_err(error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn key(batch_id: i64, map_task: u32, partition: u32) -> ShuffleKey {
        ShuffleKey {
            job_id: "j".into(),
            batch_id,
            stage_id: 0,
            map_task,
            partition,
        }
    }

    fn batch(values: Vec<i64>) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(values))]).unwrap()
    }

    #[test]
    fn outputs_over_the_memory_bound_spill_to_disk_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let small = batch(vec![1, 2]);
        let limit = small.get_array_memory_size();
        let store = ShuffleStore::new(limit, dir.path().to_path_buf());
        let big = batch((0..10_000).collect());
        store
            .put(
                &key(0, 0, 0),
                small.schema(),
                vec![vec![small.clone()], vec![big.clone()]],
            )
            .unwrap();
        assert_eq!(store.memory_used(), limit);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "one partition spilled"
        );
        assert_eq!(store.get(&key(0, 0, 0)).unwrap().1, vec![small]);
        assert_eq!(store.get(&key(0, 0, 1)).unwrap().1, vec![big]);
        assert!(matches!(
            store.get(&key(0, 1, 0)),
            Err(ShuffleStoreError::Missing { .. })
        ));

        store
            .put(&key(1, 0, 0), batch(vec![]).schema(), vec![vec![]])
            .unwrap();
        store.release_before("j", 1);
        assert_eq!(store.memory_used(), 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "spill file deleted"
        );
        assert!(store.get(&key(1, 0, 0)).is_ok());
        store.release_batch("j", 1);
        assert!(store.get(&key(1, 0, 0)).is_err());
    }
}
