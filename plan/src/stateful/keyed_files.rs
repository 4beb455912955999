//! A shuffle partition's state files looked up by key, one file at a time, so that a
//! lookup holds one file's rows in memory however large the state grows: deduplication
//! drops fetched rows of remembered keys, session windows add the rows of the keys a
//! batch touches. See docs/architecture.md, "State after the shuffle".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::row::{RowConverter, SortField};
use sluice_core::error::{Error, Result};

/// A shuffle partition's state files a reader looks keys up in, loaded one at a time.
pub trait KeyedFiles: std::fmt::Debug + Send + Sync {
    /// How many files `partition` has.
    fn files(&self, partition: u32) -> usize;

    /// The rows of `partition`'s file `index` that are still state, in a schema holding
    /// the key columns.
    fn load(
        &self,
        partition: u32,
        index: usize,
    ) -> futures::future::BoxFuture<'_, Result<Arc<Vec<RecordBatch>>>>;
}

/// State rows held in memory, one "file" per partition.
#[derive(Debug, Default)]
pub struct RowsInMemory(pub HashMap<u32, Vec<RecordBatch>>);

impl KeyedFiles for RowsInMemory {
    fn files(&self, partition: u32) -> usize {
        usize::from(self.0.contains_key(&partition))
    }

    fn load(
        &self,
        partition: u32,
        _index: usize,
    ) -> futures::future::BoxFuture<'_, Result<Arc<Vec<RecordBatch>>>> {
        let rows = self.0.get(&partition).cloned().unwrap_or_default();
        Box::pin(async move { Ok(Arc::new(rows)) })
    }
}

/// The keys of a set of rows, to pick the rows of other batches with or without one of
/// them.
pub(crate) struct KnownKeys {
    columns: Vec<String>,
    converter: RowConverter,
    keys: HashSet<Box<[u8]>>,
}

impl KnownKeys {
    /// The keys (`columns`) of `state`'s rows.
    pub(crate) fn of(columns: &[String], state: &[RecordBatch]) -> Result<Option<KnownKeys>> {
        let Some(first) = state.first() else {
            return Ok(None);
        };
        let fields = columns
            .iter()
            .map(|name| {
                let field = first.schema().field_with_name(name)?.clone();
                Ok(SortField::new(field.data_type().clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut known = KnownKeys {
            columns: columns.to_vec(),
            converter: RowConverter::new(fields)?,
            keys: HashSet::new(),
        };
        for batch in state {
            let rows = known
                .converter
                .convert_columns(&known.key_columns(batch)?)?;
            known
                .keys
                .extend(rows.iter().map(|row| Box::from(row.as_ref())));
        }
        Ok(Some(known))
    }

    fn key_columns(&self, batch: &RecordBatch) -> Result<Vec<arrow::array::ArrayRef>> {
        self.columns
            .iter()
            .map(|name| {
                batch.column_by_name(name).cloned().ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "the state key {name} is not in the shuffled rows"
                    ))
                })
            })
            .collect()
    }

    /// The rows of `batch` whose key is not known.
    pub(crate) fn unknown(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.select(batch, false)
    }

    /// The rows of `batch` whose key is known.
    pub(crate) fn known(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.select(batch, true)
    }

    fn select(&self, batch: &RecordBatch, known: bool) -> Result<RecordBatch> {
        let rows = self.converter.convert_columns(&self.key_columns(batch)?)?;
        let keep: BooleanArray = rows
            .iter()
            .map(|row| Some(self.keys.contains(row.as_ref()) == known))
            .collect();
        Ok(filter_record_batch(batch, &keep)?)
    }
}
