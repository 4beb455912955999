//! Running a job's SQL over a micro-batch with DataFusion.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

use crate::error::{Error, Result};

/// The name of the micro-batch table in a job's SQL.
pub const SOURCE_TABLE: &str = "source";

/// A session whose `source` table holds `batches`; one partition per task.
fn session(schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<SessionContext> {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    let table = MemTable::try_new(schema, vec![batches])?;
    ctx.register_table(SOURCE_TABLE, Arc::new(table))?;
    Ok(ctx)
}

async fn plan(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options)
        .await
        .map_err(|e| Error::InvalidSql {
            message: e.strip_backtrace(),
        })
}

/// A planned query: its output schema and whether it needs an exchange between tasks.
#[derive(Debug, Clone)]
pub struct QueryShape {
    pub output_schema: SchemaRef,
    /// The first operator found that needs data of several tasks together, if any.
    pub exchange: Option<&'static str>,
}

/// Plans `sql` over an empty `source` of `schema`: checks it and describes its shape.
pub async fn analyze(sql: &str, schema: SchemaRef) -> Result<QueryShape> {
    let ctx = session(schema, vec![])?;
    let frame = plan(&ctx, sql).await?;
    let output_schema = Arc::new(frame.schema().as_arrow().clone());
    let optimized = ctx
        .state()
        .optimize(frame.logical_plan())
        .map_err(|e| Error::InvalidSql {
            message: e.strip_backtrace(),
        })?;
    Ok(QueryShape {
        output_schema,
        exchange: exchange_operator(&optimized),
    })
}

/// The first operator of `plan` that needs rows from more than one task.
fn exchange_operator(plan: &LogicalPlan) -> Option<&'static str> {
    let mut found = None;
    let _ = plan.apply(|node| {
        found = match node {
            LogicalPlan::Aggregate(_) => Some("GROUP BY / aggregate"),
            LogicalPlan::Join(_) => Some("JOIN"),
            LogicalPlan::Distinct(_) => Some("DISTINCT"),
            LogicalPlan::Sort(_) => Some("ORDER BY"),
            LogicalPlan::Window(_) => Some("window function (OVER)"),
            LogicalPlan::Limit(_) => Some("LIMIT"),
            LogicalPlan::Repartition(_) => Some("repartition"),
            LogicalPlan::RecursiveQuery(_) => Some("recursive query"),
            _ => None,
        };
        Ok(if found.is_some() {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Runs `sql` over `batches` and collects the result.
pub async fn run(
    sql: &str,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let ctx = session(schema, batches)?;
    let frame = plan(&ctx, sql).await?;
    Ok(frame.collect().await?)
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, true),
            Field::new("name", DataType::Utf8, true),
        ]))
    }

    #[tokio::test]
    async fn projection_and_filter_run_per_batch() {
        let batch = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec!["a", "b", "c"])),
            ],
        )
        .unwrap();
        let sql = "SELECT id * 10 AS x, upper(name) AS n, CASE WHEN id > 1 THEN 'big' ELSE 'small' END AS size \
                   FROM source WHERE id <> 2";
        let out = run(sql, schema(), vec![batch]).await.unwrap();
        let rows: usize = out.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2);
        assert_eq!(
            out[0].column(0).as_primitive::<Int64Type>().values(),
            &[10, 30]
        );
    }

    #[tokio::test]
    async fn shapes_name_their_exchange() {
        let single = analyze(
            "SELECT id, CAST(id AS DOUBLE) AS d FROM source WHERE name LIKE 'a%'",
            schema(),
        )
        .await
        .unwrap();
        assert_eq!(single.exchange, None);
        assert_eq!(single.output_schema.field(1).name(), "d");
        for (sql, exchange) in [
            (
                "SELECT name, count(*) FROM source GROUP BY name",
                "GROUP BY / aggregate",
            ),
            ("SELECT DISTINCT name FROM source", "GROUP BY / aggregate"),
            (
                "SELECT a.id FROM source a JOIN source b ON a.id = b.id",
                "JOIN",
            ),
            ("SELECT id FROM source ORDER BY id", "ORDER BY"),
            (
                "SELECT id, row_number() OVER (ORDER BY id) FROM source",
                "window function (OVER)",
            ),
        ] {
            let shape = analyze(sql, schema()).await.unwrap();
            assert_eq!(shape.exchange, Some(exchange), "{sql}");
        }
    }

    #[tokio::test]
    async fn bad_sql_and_statements_are_refused() {
        for sql in [
            "SELECT nope FROM source",
            "SELEC id FROM source",
            "CREATE TABLE t (a INT)",
            "SELECT id FROM other",
        ] {
            let err = analyze(sql, schema()).await.unwrap_err();
            assert!(matches!(err, Error::InvalidSql { .. }), "{sql}: {err}");
        }
    }
}
