//! Deduplication's first row per key by hashing instead of sorting. The deduplicating
//! view ranks each key's rows with `row_number() OVER (PARTITION BY key ORDER BY …)` and
//! keeps rank 1; DataFusion runs that as a sort of all the partition's rows and a window
//! operator finding partitions row by row. [`hash_first_rows`] replaces that window (and
//! the sort feeding it) with [`FirstRowPerKeyExec`], which keeps, per key, the index of
//! its least row by the same order in a hash map, and yields those rows with rank 1: the
//! same rows the filter above keeps, in one pass. See docs/architecture.md,
//! "Deduplication".

use std::any::Any;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, take_record_batch, SortOptions};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{internal_err, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::BoundedWindowAggExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::TryStreamExt;
use sluice_core::schema::SEEN_COLUMN;

/// A column of the order that picks a key's first row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderColumn {
    pub name: String,
    pub descending: bool,
    pub nulls_first: bool,
}

/// Per key (`key` columns), the least row by `order`, with a rank column of 1 appended:
/// what `row_number() OVER (PARTITION BY key ORDER BY order)` gives those rows, without
/// the other rows.
#[derive(Debug)]
pub struct FirstRowPerKeyExec {
    input: Arc<dyn ExecutionPlan>,
    key: Vec<String>,
    order: Vec<OrderColumn>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl FirstRowPerKeyExec {
    /// The operator over `input`, yielding `schema` (the input's columns and a rank).
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        key: Vec<String>,
        order: Vec<OrderColumn>,
        schema: SchemaRef,
    ) -> Result<FirstRowPerKeyExec> {
        let input_schema = input.schema();
        if schema.fields().len() != input_schema.fields().len() + 1 {
            return internal_err!("FirstRowPerKeyExec yields its input's columns and a rank");
        }
        for name in key.iter().chain(order.iter().map(|o| &o.name)) {
            input_schema.index_of(name)?;
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            input.properties().partitioning.clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        ));
        Ok(FirstRowPerKeyExec {
            input,
            key,
            order,
            schema,
            properties,
        })
    }

    pub fn key(&self) -> &[String] {
        &self.key
    }

    pub fn order(&self) -> &[OrderColumn] {
        &self.order
    }
}

impl DisplayAs for FirstRowPerKeyExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let order: Vec<String> = self
            .order
            .iter()
            .map(|o| format!("{}{}", o.name, if o.descending { " DESC" } else { "" }))
            .collect();
        write!(
            f,
            "FirstRowPerKeyExec: key=[{}] order=[{}]",
            self.key.join(", "),
            order.join(", ")
        )
    }
}

impl ExecutionPlan for FirstRowPerKeyExec {
    fn name(&self) -> &'static str {
        "FirstRowPerKeyExec"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [input] = <[_; 1]>::try_from(children)
            .map_err(|_| datafusion::common::DataFusionError::Internal("one input".into()))?;
        Ok(Arc::new(FirstRowPerKeyExec::try_new(
            input,
            self.key.clone(),
            self.order.clone(),
            self.schema.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let input_schema = self.input.schema();
        let (key, order, schema) = (self.key.clone(), self.order.clone(), self.schema.clone());
        let first = async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let rows = concat_batches(&input_schema, &batches)?;
            first_rows(&rows, &key, &order, &schema)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::once(first),
        )))
    }
}

/// The least row of each key of `rows` by `order`, in their order in `rows`, with a rank
/// of 1 appended (as `schema`).
fn first_rows(
    rows: &RecordBatch,
    key: &[String],
    order: &[OrderColumn],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let columns = |names: &mut dyn Iterator<Item = &String>| -> Result<Vec<ArrayRef>> {
        names
            .map(|name| Ok(rows.column(rows.schema().index_of(name)?).clone()))
            .collect()
    };
    let key_columns = columns(&mut key.iter())?;
    let order_columns = columns(&mut order.iter().map(|o| &o.name))?;
    let keys = RowConverter::new(
        key_columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?
    .convert_columns(&key_columns)?;
    let orders = RowConverter::new(
        order_columns
            .iter()
            .zip(order)
            .map(|(c, o)| {
                SortField::new_with_options(
                    c.data_type().clone(),
                    SortOptions {
                        descending: o.descending,
                        nulls_first: o.nulls_first,
                    },
                )
            })
            .collect(),
    )?
    .convert_columns(&order_columns)?;
    let mut first: HashMap<arrow::row::Row<'_>, usize> = HashMap::new();
    for i in 0..rows.num_rows() {
        match first.entry(keys.row(i)) {
            Entry::Vacant(entry) => {
                entry.insert(i);
            }
            Entry::Occupied(mut entry) => {
                if orders.row(i) < orders.row(*entry.get()) {
                    entry.insert(i);
                }
            }
        }
    }
    let mut indices: Vec<u32> = first.into_values().map(|i| i as u32).collect();
    indices.sort_unstable();
    let taken = take_record_batch(rows, &UInt32Array::from(indices))?;
    let mut columns = taken.columns().to_vec();
    columns.push(Arc::new(UInt64Array::from(vec![1u64; taken.num_rows()])));
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `plan` with the deduplicating `row_number()` over `key` (and the sort feeding it)
/// replaced by [`FirstRowPerKeyExec`]; unchanged when it has none.
pub fn hash_first_rows(
    plan: Arc<dyn ExecutionPlan>,
    key: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(window) = node.as_any().downcast_ref::<BoundedWindowAggExec>() else {
            return Ok(Transformed::no(node));
        };
        let [expr] = window.window_expr() else {
            return Ok(Transformed::no(node));
        };
        let column_name = |e: &Arc<dyn datafusion::physical_expr::PhysicalExpr>| {
            e.as_any()
                .downcast_ref::<Column>()
                .map(|c| c.name().to_string())
        };
        let partition_by: Option<Vec<String>> =
            expr.partition_by().iter().map(column_name).collect();
        let order: Option<Vec<OrderColumn>> = expr
            .order_by()
            .iter()
            .map(|sort| {
                Some(OrderColumn {
                    name: column_name(&sort.expr)?,
                    descending: sort.options.descending,
                    nulls_first: sort.options.nulls_first,
                })
            })
            .collect();
        let (Some(partition_by), Some(order)) = (partition_by, order) else {
            return Ok(Transformed::no(node));
        };
        // The view's ranking alone orders by the hidden seen column first (a query over
        // `source` cannot name it), so a window of the query itself is never replaced.
        let views_ranking = order.first().is_some_and(|o| o.name == SEEN_COLUMN);
        if !expr.name().starts_with("row_number") || partition_by != key || !views_ranking {
            return Ok(Transformed::no(node));
        }
        let input = match window.input().as_any().downcast_ref::<SortExec>() {
            Some(sort) => sort.input().clone(),
            None => window.input().clone(),
        };
        let first = FirstRowPerKeyExec::try_new(input, key.to_vec(), order, node.schema())?;
        Ok(Transformed::yes(Arc::new(first) as Arc<dyn ExecutionPlan>))
    })
    .map(|transformed| transformed.data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn keeps_each_keys_least_row_by_the_order_nulls_last() {
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, true),
        ]));
        let rows = RecordBatch::try_new(
            input.clone(),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b"),
                    Some("a"),
                    None,
                    Some("b"),
                    None,
                ])),
                Arc::new(Int64Array::from(vec![
                    Some(5),
                    None,
                    Some(3),
                    Some(9),
                    Some(7),
                    Some(1),
                ])),
            ],
        )
        .unwrap();
        let mut fields = input.fields().to_vec();
        fields.push(Arc::new(Field::new("rank", DataType::UInt64, false)));
        let schema = Arc::new(Schema::new(fields));
        let order = [OrderColumn {
            name: "ts".into(),
            descending: false,
            nulls_first: false,
        }];
        let first = first_rows(&rows, &["k".into()], &order, &schema).unwrap();
        let ts: Vec<Option<i64>> = first
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .iter()
            .collect();
        // a: 3 over 5; b: 7 over null (nulls last); null key: 1 over 9.
        assert_eq!(ts, vec![Some(3), Some(7), Some(1)]);
        assert_eq!(first.num_columns(), 3);
    }
}
