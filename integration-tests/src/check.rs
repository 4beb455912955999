//! Checking committed rows against the produced order events.

use std::collections::HashSet;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use sluice_datagen::synthetic::Order;

/// SQL that keeps about half of the orders, with their Kafka coordinates.
pub const FILTER_SQL: &str = "SELECT order_id, product_id, amount, _partition AS kafka_partition, \
                              _offset AS kafka_offset FROM source WHERE product_id <= 25";

/// One committed row: (partition, offset, order id, product, amount in cents).
pub type Row = (i32, i64, String, i64, i64);

/// The rows of [`FILTER_SQL`]'s table.
pub fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut rows = Vec::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .unwrap_or_else(|| panic!("column {name}"))
        };
        let partitions = col("kafka_partition").as_primitive::<Int32Type>();
        let offsets = col("kafka_offset").as_primitive::<Int64Type>();
        let ids = col("order_id").as_string::<i32>();
        let products = col("product_id").as_primitive::<Int64Type>();
        let amounts = col("amount").as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            rows.push((
                partitions.value(i),
                offsets.value(i),
                ids.value(i).to_string(),
                products.value(i),
                (amounts.value(i) * 100.0).round() as i64,
            ));
        }
    }
    rows
}

/// The rows [`FILTER_SQL`] must produce for events `0..events` produced round-robin.
pub fn expected_rows(events: u64, partitions: i32) -> Vec<Row> {
    (0..events)
        .map(|seq| (seq, Order::new(seq, 0)))
        .filter(|(_, o)| o.product_id <= 25)
        .map(|(seq, o)| {
            let partition = (seq % partitions as u64) as i32;
            let offset = (seq / partitions as u64) as i64;
            (partition, offset, o.order_id, o.product_id, o.amount_cents)
        })
        .collect()
}

/// Each Kafka (partition, offset) once, and exactly the expected rows.
pub fn assert_exactly_once(
    mut actual: Vec<Row>,
    mut expected: Vec<Row>,
    logs: impl Fn() -> String,
) {
    let mut coordinates = HashSet::new();
    for row in &actual {
        assert!(
            coordinates.insert((row.0, row.1)),
            "partition {} offset {} committed twice\n{}",
            row.0,
            row.1,
            logs()
        );
    }
    assert_eq!(actual.len(), expected.len(), "row count\n{}", logs());
    actual.sort();
    expected.sort();
    assert!(
        actual == expected,
        "committed rows differ from the input\n{}",
        logs()
    );
}

/// Each of the orders `0..events` produced round-robin over `partitions` is in `batches`
/// exactly once, by its `order_id`; with `coordinates` (the names of the partition and
/// offset columns) each row also sits at the Kafka partition and offset it was produced to.
pub fn assert_every_order_once(
    batches: &[RecordBatch],
    events: u64,
    partitions: i32,
    coordinates: Option<(&str, &str)>,
) {
    let mut seen = std::collections::BTreeMap::new();
    for b in batches {
        let ids = b
            .column_by_name("order_id")
            .expect("column order_id")
            .as_string::<i32>();
        let at = coordinates.map(|(partition, offset)| {
            let column = |name: &str| {
                b.column_by_name(name)
                    .unwrap_or_else(|| panic!("column {name}"))
                    .clone()
            };
            (column(partition), column(offset))
        });
        for i in 0..b.num_rows() {
            let place = at.as_ref().map(|(p, o)| {
                (
                    p.as_primitive::<Int32Type>().value(i),
                    o.as_primitive::<Int64Type>().value(i),
                )
            });
            let id = ids.value(i).to_string();
            assert!(
                seen.insert(id.clone(), place).is_none(),
                "order {id} committed twice"
            );
        }
    }
    let expected: std::collections::BTreeMap<_, _> = (0..events)
        .map(|seq| {
            let place = coordinates.map(|_| {
                (
                    (seq % partitions as u64) as i32,
                    (seq / partitions as u64) as i64,
                )
            });
            (Order::new(seq, 0).order_id, place)
        })
        .collect();
    let missing: Vec<_> = expected
        .keys()
        .filter(|k| !seen.contains_key(*k))
        .take(5)
        .collect();
    let extra: Vec<_> = seen
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .take(5)
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "orders missing (first 5): {missing:?}; not produced (first 5): {extra:?}"
    );
    assert_eq!(
        seen, expected,
        "an order sits at another partition or offset"
    );
}

/// No batch id appears in two snapshots.
pub fn assert_unique_batches(batches: &[String]) {
    let unique: HashSet<_> = batches.iter().collect();
    assert_eq!(
        unique.len(),
        batches.len(),
        "a batch was committed twice: {batches:?}"
    );
}
