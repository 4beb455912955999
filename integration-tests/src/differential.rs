//! The differential suite: queries run through Sluice and, over the same Kafka records,
//! by single-process DataFusion; the committed rows must equal DataFusion's.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit, TimestampMillisecondType};
use datafusion::datasource::MemTable;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use sluice_core::spec::JobSpec;
use sluice_kafka::decode::RecordDecoder;
use sluice_kafka::offsets::OffsetRange;
use sluice_kafka::read::{consumer, read_range, OffsetReader};
use sluice_proto::v1::JobStatus;
use sluice_testkit::normalized_rows;

use crate::TestCluster;

/// Queries over `source` (order events), `products` (an Iceberg table) and `regions`
/// (a Parquet file that lacks JP): aggregates of every common kind, multi-key GROUP BY,
/// HAVING, DISTINCT, joins with dimension tables and with the stream itself, window
/// functions, ORDER BY/LIMIT, UNION, and nested subqueries.
pub const QUERIES: &[(&str, &str)] = &[
    ("group_count_sum", "SELECT product_id, count(*) AS n, sum(amount) AS revenue FROM source GROUP BY product_id"),
    ("group_min_max_avg", "SELECT country, min(amount) AS lo, max(amount) AS hi, avg(amount) AS mean FROM source GROUP BY country"),
    ("group_two_keys", "SELECT country, product_id, count(*) AS n FROM source GROUP BY country, product_id"),
    ("having", "SELECT country, count(*) AS n FROM source GROUP BY country HAVING count(*) > 380"),
    ("global_aggregates", "SELECT count(*) AS n, sum(amount) AS total, count(DISTINCT customer_id) AS customers FROM source"),
    ("distinct", "SELECT DISTINCT country FROM source"),
    ("count_distinct_per_group", "SELECT country, count(DISTINCT product_id) AS products FROM source GROUP BY country"),
    ("statistics", "SELECT country, stddev(amount) AS sd, var_samp(amount) AS v, median(amount) AS mid FROM source GROUP BY country"),
    ("bool_aggregates", "SELECT product_id, bool_and(amount > 1) AS all_big, bool_or(amount > 450) AS any_huge FROM source GROUP BY product_id"),
    ("group_by_expression", "SELECT country, CASE WHEN amount > 250 THEN 'big' ELSE 'small' END AS size, count(*) AS n FROM source GROUP BY 1, 2"),
    ("kafka_metadata", "SELECT _partition AS p, count(*) AS n, min(_offset) AS first, max(_offset) AS last FROM source GROUP BY _partition"),
    ("join_iceberg_dimension", "SELECT s.order_id, p.name FROM source s JOIN products p ON s.product_id = p.product_id WHERE s.amount > 450"),
    ("join_then_group", "SELECT p.category, count(*) AS n, sum(s.amount) AS revenue FROM source s JOIN products p ON s.product_id = p.product_id GROUP BY p.category"),
    ("join_parquet_dimension", "SELECT r.region, count(*) AS n FROM source s JOIN regions r ON s.country = r.country GROUP BY r.region"),
    ("left_join_dimension", "SELECT s.order_id, r.region FROM source s LEFT JOIN regions r ON s.country = r.country WHERE s.amount < 20"),
    ("semi_join_dimension", "SELECT customer_id, count(*) AS n FROM source WHERE product_id IN (SELECT product_id FROM products WHERE category = 'books') GROUP BY customer_id"),
    ("anti_join_dimension", "SELECT order_id FROM source s WHERE NOT EXISTS (SELECT 1 FROM regions r WHERE r.country = s.country)"),
    ("self_join", "SELECT a.order_id, b.order_id AS other FROM source a JOIN source b ON a.customer_id = b.customer_id AND a.order_id < b.order_id"),
    ("order_by_limit", "SELECT order_id, amount FROM source ORDER BY amount DESC, order_id LIMIT 10"),
    ("top_groups", "SELECT country, sum(amount) AS revenue FROM source GROUP BY country ORDER BY revenue DESC LIMIT 3"),
    ("rank_per_partition", "SELECT order_id, rank() OVER (PARTITION BY country ORDER BY amount DESC, order_id) AS r FROM source"),
    ("row_number_global", "SELECT order_id, row_number() OVER (ORDER BY _partition, _offset) AS n FROM source"),
    ("running_sum", "SELECT order_id, sum(amount) OVER (PARTITION BY product_id ORDER BY _partition, _offset ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running FROM source"),
    ("lag", "SELECT order_id, lag(amount) OVER (PARTITION BY customer_id ORDER BY _partition, _offset) AS previous FROM source WHERE customer_id < 2000"),
    ("union_distinct", "SELECT country FROM source WHERE amount > 400 UNION SELECT country FROM source WHERE amount < 5"),
    ("union_all", "SELECT order_id FROM source WHERE country = 'DE' UNION ALL SELECT order_id FROM source WHERE amount > 490"),
    ("scalar_subquery", "SELECT order_id FROM source WHERE amount > (SELECT avg(amount) * 1.9 FROM source)"),
    ("nested_subqueries", "SELECT country, n FROM (SELECT country, count(*) AS n FROM source GROUP BY country) t WHERE n >= (SELECT avg(c) FROM (SELECT count(*) AS c FROM source GROUP BY country) u)"),
    ("window_over_aggregate", "SELECT product_id, revenue FROM (SELECT product_id, sum(amount) AS revenue, rank() OVER (ORDER BY sum(amount) DESC) AS r FROM source GROUP BY product_id) t WHERE r <= 5"),
];

/// Product categories, by `product_id % 4`.
const CATEGORIES: [&str; 4] = ["books", "games", "music", "tools"];

/// The `products` dimension as JSON events, one per product id.
pub fn product_events() -> Vec<String> {
    (1..=sluice_datagen::synthetic::PRODUCTS)
        .map(|id| {
            format!(
                r#"{{"product_id":{id},"name":"product-{id}","category":"{}"}}"#,
                CATEGORIES[(id % 4) as usize]
            )
        })
        .collect()
}

/// The source schema of [`product_events`], as a spec's YAML list.
pub const PRODUCT_SCHEMA_YAML: &str =
    "[{name: product_id, type: int64}, {name: name, type: utf8}, {name: category, type: utf8}]";

/// Every record of `topic`, decoded as `spec` decodes them.
pub fn source_batches(cluster: &TestCluster, spec: &JobSpec) -> Result<Vec<RecordBatch>> {
    let kafka = &spec.source().kafka;
    let bootstrap = cluster.bootstrap_servers();
    let decoder = RecordDecoder::for_job(spec)?;
    let reader = OffsetReader::new(&bootstrap)?;
    let consumer = consumer(&bootstrap)?;
    let mut batches = vec![];
    for ((topic, partition), marks) in reader.watermarks(&kafka.topics)? {
        let range = OffsetRange {
            topic: topic.clone(),
            partition,
            start: marks.low,
            end: marks.high,
        };
        let read = read_range(&consumer, &bootstrap, &range, true, None)?;
        batches.push(decoder.decode(&topic, partition, &read.records)?.batch);
    }
    Ok(batches)
}

/// What single-process DataFusion computes for `sql` over `source` alone.
pub async fn query_source(sql: &str, source: Vec<RecordBatch>) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    register_source(&ctx, source)?;
    Ok(ctx.sql(sql).await?.collect().await?)
}

fn register_source(ctx: &SessionContext, source: Vec<RecordBatch>) -> Result<()> {
    let schema = source[0].schema();
    ctx.register_table("source", Arc::new(MemTable::try_new(schema, vec![source])?))?;
    Ok(())
}

/// What single-process DataFusion computes for `sql` over the same tables.
pub async fn expected_rows(
    sql: &str,
    source: &[RecordBatch],
    products: &[RecordBatch],
    regions: &std::path::Path,
) -> Result<Vec<String>> {
    let ctx = SessionContext::new();
    register_source(&ctx, source.to_vec())?;
    ctx.register_table(
        "products",
        Arc::new(MemTable::try_new(
            products[0].schema(),
            vec![products.to_vec()],
        )?),
    )?;
    ctx.register_parquet(
        "regions",
        regions.to_string_lossy().as_ref(),
        ParquetReadOptions::default(),
    )
    .await?;
    Ok(normalized_rows(&ctx.sql(sql).await?.collect().await?))
}

/// Window start (ms) -> (count, revenue in cents).
pub type Windows = BTreeMap<i64, (i64, i64)>;

/// Reads `window_start`, `n` and `revenue` rows into [`Windows`]; a window twice fails.
pub fn windows_of(batches: &[RecordBatch]) -> Windows {
    let mut out = Windows::new();
    for batch in batches {
        let starts = arrow::compute::cast(
            batch.column_by_name("window_start").unwrap(),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .unwrap();
        let starts = starts.as_primitive::<TimestampMillisecondType>();
        let counts =
            arrow::compute::cast(batch.column_by_name("n").unwrap(), &DataType::Int64).unwrap();
        let counts = counts.as_primitive::<Int64Type>();
        let revenue = batch
            .column_by_name("revenue")
            .unwrap()
            .as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            assert!(starts.is_valid(i), "a window without a start");
            let cents = (revenue.value(i) * 100.0).round() as i64;
            let previous = out.insert(starts.value(i), (counts.value(i), cents));
            assert!(previous.is_none(), "window {} twice", starts.value(i));
        }
    }
    out
}

/// Checks a windowed `available_now` job over `spec` that ended with `status` against
/// single-process DataFusion: none of its records was late, its last batch read no
/// records and only flushed what the final watermark closes, and the table holds each
/// window (of `size_ms`) that watermark closed once, exactly as `expected_sql` computes
/// it over all the job's records (decoded once each, without windows); at least ten.
pub async fn assert_closed_windows(
    cluster: &TestCluster,
    spec: &str,
    status: &JobStatus,
    size_ms: i64,
    expected_sql: &str,
    seed: u64,
) {
    let mut parsed = JobSpec::parse(spec).unwrap();
    let late = cluster
        .driver_metric(&format!(
            r#"sluice_late_records_total{{job="{}"}}"#,
            parsed.name
        ))
        .await
        .unwrap();
    assert_eq!(late, 0.0, "records are late by less than the delay");
    // The job ends with a batch without records that runs under the final watermark:
    // every window that watermark closes is written.
    let recent = &status.recent_batches;
    let last = recent.last().unwrap();
    assert_eq!(
        last.input_rows, 0,
        "the last batch only flushes closed windows"
    );
    let closed_by = last.watermark_ms.unwrap();
    assert_eq!(
        recent[recent.len() - 2].watermark_ms,
        Some(closed_by),
        "the flush ran under the final watermark"
    );
    // The records once each, as decoded without windows (sliding windows repeat them).
    parsed.window = None;
    let source = source_batches(cluster, &parsed).unwrap();
    let expected = query_source(expected_sql, source).await.unwrap();
    let expected: Windows = windows_of(&expected)
        .into_iter()
        .filter(|(start, _)| *start + size_ms <= closed_by)
        .collect();
    let streamed = windows_of(&cluster.table_rows(spec).await.unwrap());
    assert!(expected.len() >= 10, "{} windows closed", expected.len());
    assert_eq!(streamed, expected, "seed {seed}");
}
