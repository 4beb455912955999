//! Parsing and validation of whole specs.

use super::*;
use std::time::Duration;

use crate::error::Error;

pub(crate) const EXAMPLE: &str = r#"
name: orders-filtered
source:
  kafka:
    bootstrap_servers: "localhost:9092"
    topics: [orders]
    starting_offsets: earliest
    max_offsets_per_trigger: 1000
    format: json
    schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]
trigger: {processing_time: 500ms}
sql: SELECT order_id, amount FROM source WHERE amount > 10
sink:
  iceberg:
    catalog: {type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}
    namespace: shop
    table: big_orders
"#;

fn with(replace: &str, by: &str) -> String {
    assert!(EXAMPLE.contains(replace), "example lacks {replace}");
    EXAMPLE.replace(replace, by)
}

fn error_field(text: &str) -> String {
    match JobSpec::parse(text) {
        Err(Error::InvalidSpec { field, .. }) => field,
        other => panic!("expected an invalid spec, got {other:?}"),
    }
}

fn error_text(text: &str) -> String {
    match JobSpec::parse(text) {
        Err(e @ Error::InvalidSpec { .. }) => e.to_string(),
        other => panic!("expected an invalid spec, got {other:?}"),
    }
}

#[test]
fn example_spec_parses_with_defaults() {
    let spec = JobSpec::parse(EXAMPLE).unwrap();
    assert_eq!(spec.name, "orders-filtered");
    assert_eq!(
        spec.source().kafka.starting_offsets,
        StartingOffsets::Earliest
    );
    assert_eq!(spec.source().kafka.on_malformed, OnMalformed::Fail);
    assert_eq!(
        spec.trigger(),
        Trigger::ProcessingTime(Duration::from_millis(500))
    );
    assert_eq!(spec.parallelism, ParallelismSpec::default());
    assert_eq!(spec.sink.iceberg.catalog.name(), "default");
}

#[test]
fn spec_round_trips_through_json() {
    let spec = JobSpec::parse(EXAMPLE).unwrap();
    assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
    let per_partition = with(
        "starting_offsets: earliest",
        "starting_offsets: {orders: {0: 5, 3: 7}}",
    );
    let spec = JobSpec::parse(&per_partition).unwrap();
    let StartingOffsets::PerPartition(map) = &spec.source().kafka.starting_offsets else {
        panic!("expected per-partition offsets");
    };
    assert_eq!(map["orders"][&3], 7);
    assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
}

#[test]
fn starting_offsets_by_time_take_milliseconds_or_rfc3339() {
    let starting = |value: &str| {
        let text = with(
            "starting_offsets: earliest",
            &format!("starting_offsets: {value}"),
        );
        JobSpec::parse(&text).map(|spec| spec.source().kafka.starting_offsets.clone())
    };
    assert_eq!(
        starting("{timestamp: 1764547200000}").unwrap(),
        StartingOffsets::Timestamp(1_764_547_200_000)
    );
    assert_eq!(
        starting("{timestamp: '2025-12-01T00:00:00Z'}").unwrap(),
        StartingOffsets::Timestamp(1_764_547_200_000)
    );
    let spec = JobSpec::parse(&with(
        "starting_offsets: earliest",
        "starting_offsets: {timestamp: 1764547200000}",
    ))
    .unwrap();
    assert_eq!(JobSpec::parse(&spec.to_json()).unwrap(), spec);
    // A topic called `timestamp` is still a per-partition map.
    let topic = JobSpec::parse(&with("topics: [orders]", "topics: [timestamp]").replace(
        "starting_offsets: earliest",
        "starting_offsets: {timestamp: {0: 4}}",
    ))
    .unwrap();
    assert!(matches!(
        topic.source().kafka.starting_offsets,
        StartingOffsets::PerPartition(_)
    ));
    let error = starting("{timestamp: 'yesterday'}")
        .unwrap_err()
        .to_string();
    assert!(error.contains("bad timestamp \"yesterday\""), "{error}");
    let error = starting("{timestamp: -5}").unwrap_err().to_string();
    assert!(error.contains("starting_offsets.timestamp"), "{error}");
}

#[test]
fn tasks_per_slot_defaults_to_one_and_must_be_above_zero() {
    assert_eq!(
        JobSpec::parse(EXAMPLE).unwrap().parallelism.tasks_per_slot,
        1
    );
    let three = format!("{EXAMPLE}\nparallelism: {{tasks_per_slot: 3}}\n");
    assert_eq!(
        JobSpec::parse(&three).unwrap().parallelism.tasks_per_slot,
        3
    );
    let zero = format!("{EXAMPLE}\nparallelism: {{tasks_per_slot: 0}}\n");
    assert_eq!(error_field(&zero), "parallelism.tasks_per_slot");
}

#[test]
fn bad_fields_are_named() {
    assert_eq!(
        error_field(&with("name: orders-filtered", "name: 'a b'")),
        "name"
    );
    assert_eq!(
        error_field(&with("topics: [orders]", "topics: []")),
        "source.kafka.topics"
    );
    let err = error_text(&with(
        "starting_offsets: earliest",
        "starting_offsets: newest",
    ));
    assert!(err.contains("source.kafka.starting_offsets"), "{err}");
    assert_eq!(
        error_field(&with(
            "starting_offsets: earliest",
            "starting_offsets: {other: {0: 1}}"
        )),
        "source.kafka.starting_offsets.other"
    );
    assert_eq!(
        error_field(&with(
            "max_offsets_per_trigger: 1000",
            "max_offsets_per_trigger: 0"
        )),
        "source.kafka.max_offsets_per_trigger"
    );
    assert_eq!(
        error_field(&with("{processing_time: 500ms}", "{processing_time: soon}")),
        "trigger.processing_time"
    );
    assert_eq!(
        error_field(&with(
            "{processing_time: 500ms}",
            "{processing_time: 1s, once: true}"
        )),
        "trigger"
    );
    assert_eq!(
        error_field(&with("type: sql", "type: hive")),
        "sink.iceberg.catalog.type"
    );
    assert_eq!(
        error_field(&with("type: sql", "type: rest")),
        "sink.iceberg.catalog.uri"
    );
    assert_eq!(
        error_field(&with("file:///tmp/wh", "hdfs://nn/wh")),
        "sink.iceberg.catalog.warehouse"
    );
    assert_eq!(
        error_field(&with(", warehouse: \"file:///tmp/wh\"", "")),
        "sink.iceberg.catalog.warehouse"
    );
    assert_eq!(
        error_field(&with(
            "{name: amount, type: float64}",
            "{name: amount, type: money}"
        )),
        "source.kafka.schema.amount"
    );
    assert_eq!(
        error_field(&with(
            "{name: amount, type: float64}",
            "{name: _offset, type: int64}"
        )),
        "source.kafka.schema._offset"
    );
}

#[test]
fn rest_catalogs_and_object_storage_warehouses_are_accepted() {
    let spec = JobSpec::parse(&with(
        r#"{type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}"#,
        r#"{type: rest, uri: "http://rest:8181", warehouse: "s3://lake/wh",
                properties: {s3.endpoint: "http://minio:9000", s3.path-style-access: "true"}}"#,
    ))
    .unwrap();
    let catalog = &spec.sink.iceberg.catalog;
    assert_eq!(catalog.validate("c").unwrap(), CatalogKind::Rest);
    assert_eq!(catalog.properties["s3.endpoint"], "http://minio:9000");
    let spec = JobSpec::parse(&with("file:///tmp/wh", "s3://lake/wh")).unwrap();
    assert_eq!(
        spec.sink.iceberg.catalog.validate("c").unwrap(),
        CatalogKind::Sql
    );
}

#[test]
fn unknown_and_missing_fields_are_reported_with_their_location() {
    let err = JobSpec::parse(&with("sql:", "sqll:"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("sqll"), "{err}");
    let err = JobSpec::parse("name: x").unwrap_err().to_string();
    assert!(err.contains("missing field"), "{err}");
}

#[test]
fn raw_format_needs_no_schema_and_json_needs_one() {
    let raw = with("format: json", "format: raw").replace(
        "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]",
        "",
    );
    assert!(JobSpec::parse(&raw).is_ok());
    let schemaless = EXAMPLE.replace(
        "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]",
        "",
    );
    assert_eq!(error_field(&schemaless), "source.kafka.schema");
}

#[test]
fn a_watermark_names_a_timestamp_column_and_a_delay() {
    let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
    let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
    let spec = |watermark: &str| with(schema, &format!("{with_ts}\n    watermark: {watermark}"));
    let parsed = JobSpec::parse(&spec("{column: ts, delay: 30s}")).unwrap();
    let watermark = parsed.source().watermark.clone().unwrap();
    assert_eq!(watermark.delay_ms().unwrap(), 30_000);
    assert!(JobSpec::parse(&spec("{column: _timestamp, delay: 0s}")).is_ok());
    assert_eq!(
        (
            watermark.idle_timeout_ms().unwrap(),
            watermark.advance_when_idle_ms().unwrap()
        ),
        (None, None)
    );
    let idle = JobSpec::parse(&spec(
        "{column: ts, delay: 5s, idle_timeout: 1m, advance_when_idle: 10s}",
    ))
    .unwrap();
    let idle = idle.source().watermark.clone().unwrap();
    assert_eq!(
        (
            idle.idle_timeout_ms().unwrap(),
            idle.advance_when_idle_ms().unwrap()
        ),
        (Some(60_000), Some(10_000))
    );
    for (bad, why) in [
        (
            "{column: order_id, delay: 30s}",
            "timestamp_ms or timestamp_us",
        ),
        ("{column: nope, delay: 30s}", "not a column"),
        ("{column: ts, delay: soon}", "not a duration"),
        ("{column: ts, delay: 5s, idle_timeout: 0s}", "above zero"),
        (
            "{column: ts, delay: 5s, idle_timeout: never}",
            "not a duration",
        ),
        (
            "{column: ts, delay: 5s, advance_when_idle: 10s}",
            "needs source.watermark.idle_timeout",
        ),
        (
            "{column: ts, delay: 5s, idle_timeout: 1m, advance_when_idle: later}",
            "not a duration",
        ),
    ] {
        let message = error_text(&spec(bad));
        assert!(message.contains(why), "{bad}: {message}");
        assert!(message.contains("source.watermark"), "{message}");
    }
}

#[test]
fn dedup_names_source_columns_and_needs_a_watermark() {
    let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
    let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
    let watermark = "watermark: {column: ts, delay: 30s}";
    let spec = |options: &str| with(schema, &format!("{with_ts}\n    {options}"));
    let parsed = JobSpec::parse(&spec(&format!(
        "{watermark}\n    dedup: {{key: [order_id, _key], within: 10m}}"
    )))
    .unwrap();
    let dedup = parsed.dedup.as_ref().unwrap();
    assert_eq!(dedup.within_ms().unwrap(), 600_000);
    assert!(parsed.event_time().is_stateful());
    let tumbling = format!("{watermark}\n    window: {{size: 1m}}\n    dedup: {{key: [order_id]}}");
    assert!(
        JobSpec::parse(&spec(&tumbling)).is_ok(),
        "deduplicated tumbling windows"
    );
    for (options, why) in [
        ("dedup: {key: [order_id]}", "needs source.watermark"),
        (
            &format!("{watermark}\n    dedup: {{key: []}}"),
            "names no column",
        ),
        (
            &format!("{watermark}\n    dedup: {{key: [nope]}}"),
            "not a column",
        ),
        (
            &format!("{watermark}\n    dedup: {{key: [order_id], within: later}}"),
            "not a duration",
        ),
    ] {
        let message = error_text(&spec(options));
        assert!(message.contains(why), "{options}: {message}");
        assert!(message.contains("spec: dedup"), "{message}");
    }
    let late =
        "watermark: {column: ts, delay: 30s, late: dead_letter}\n    dedup: {key: [order_id]}";
    assert!(JobSpec::parse(&spec(late)).unwrap().writes_dead_letters());
    let stateless = spec("watermark: {column: ts, delay: 30s, late: dead_letter}");
    assert!(error_text(&stateless).contains("only windows and deduplication drop late records"));
    let hidden = "schema: [{name: _sluice_seen, type: utf8}]";
    assert!(error_text(&with(schema, hidden)).contains("taken"));
}

#[test]
fn a_topic_pattern_matches_whole_names_and_never_internal_topics() {
    let parse = |yaml: &str| -> KafkaSourceSpec { serde_yaml_ng::from_str(yaml).unwrap() };
    let kafka = parse(r"{bootstrap_servers: b, topic_pattern: 'orders\..*'}");
    let matcher = kafka.topic_matcher().unwrap();
    assert!(matcher.matches("orders.eu") && matcher.matches("orders.us"));
    assert!(
        !matcher.matches("old.orders.eu"),
        "the whole name must match"
    );
    assert!(!matcher.matches("orders"));
    let everything = parse(r"{bootstrap_servers: b, topics: [__keep], topic_pattern: '.*'}");
    let matcher = everything.topic_matcher().unwrap();
    assert!(matcher.matches("anything") && !matcher.matches("__consumer_offsets"));
    assert!(
        matcher.matches("__keep"),
        "a named topic is read whatever its name"
    );
    let bad = parse("{bootstrap_servers: b, topic_pattern: 'orders.('}");
    assert!(bad
        .topic_matcher()
        .unwrap_err()
        .to_string()
        .contains("not a regular expression"));
}

#[test]
fn a_session_in_the_sql_becomes_the_source_session_keyed_by_the_group_by_columns() {
    let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
    let with_ts = "schema: [{name: customer_id, type: int64}, {name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
    let spec = |options: &str, sql: &str| {
        let text = with(schema, &format!("{with_ts}\n    {options}"));
        let line = text.lines().find(|l| l.starts_with("sql:")).unwrap();
        text.replace(line, sql)
    };
    let watermark = "watermark: {column: ts, delay: 30s}";
    let sql = "sql: SELECT window_start, window_end, customer_id, count(*) AS n FROM source GROUP BY session(ts, INTERVAL '30 seconds'), customer_id";
    let parsed = JobSpec::parse(&spec(watermark, sql)).unwrap();
    let session = parsed.session.as_ref().unwrap();
    assert_eq!(
        (session.gap_ms().unwrap(), session.key.clone()),
        (30_000, vec!["customer_id".to_string()])
    );
    assert!(parsed.event_time().is_windowed() && parsed.window.is_none());
    assert_eq!(JobSpec::parse(&parsed.to_json()).unwrap(), parsed);
    let plain_sql = "sql: SELECT count(*) FROM source GROUP BY window_start, window_end";
    for (options, sql, why) in [
        ("fail_on_data_loss: true", sql, "need source.watermark"),
        (
            &format!("{watermark}\n    session: {{gap: 10s, key: [nobody]}}"),
            plain_sql,
            "\"nobody\" is not a column",
        ),
        (
            &format!("{watermark}\n    session: {{gap: 10s}}\n    dedup: {{key: [order_id]}}"),
            plain_sql,
            "cannot be combined",
        ),
        (
            &format!("{watermark}\n    session: {{gap: 0s}}"),
            plain_sql,
            "must be above zero",
        ),
    ] {
        let message = error_text(&spec(options, sql));
        assert!(message.contains(why), "{options}: {message}");
    }
}

#[test]
fn a_window_in_the_sql_becomes_the_source_window() {
    let schema = "schema: [{name: order_id, type: utf8}, {name: amount, type: float64}]";
    let with_ts = "schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]";
    let sql = "sql: SELECT window_start, count(*) AS n FROM source GROUP BY hop(ts, INTERVAL '1 minute', INTERVAL '5 minutes')";
    let spec = |options: &str| {
        let text = with(schema, &format!("{with_ts}\n    {options}"));
        let line = text.lines().find(|l| l.starts_with("sql:")).unwrap();
        text.replace(line, sql)
    };
    let parsed = JobSpec::parse(&spec("watermark: {column: ts, delay: 30s}")).unwrap();
    let window = parsed.window.as_ref().unwrap();
    assert_eq!(
        (window.size_ms().unwrap(), window.slide_ms().unwrap()),
        (300_000, 60_000)
    );
    assert!(
        parsed.sql.ends_with("GROUP BY window_start, window_end"),
        "{}",
        parsed.sql
    );
    let again = JobSpec::parse(&parsed.to_json()).unwrap();
    assert_eq!(again, parsed, "a parsed spec parses to itself");
    for (options, why) in [
        (
            "watermark: {column: _timestamp, delay: 30s}",
            "the watermark over",
        ),
        ("fail_on_data_loss: true", "need source.watermark"),
        (
            "watermark: {column: ts, delay: 30s}\n    window: {size: 1m}",
            "keep one",
        ),
    ] {
        let message = error_text(&spec(options));
        assert!(message.contains(why), "{options}: {message}");
        assert!(message.contains("sql"), "{message}");
    }
}

/// The example with a timestamp column, in today's layout: the source named, its
/// watermark beside it, the window the job's.
const NAMED_SOURCES: &str = r#"
name: orders-windowed
sources:
  orders:
    kafka:
      bootstrap_servers: "localhost:9092"
      topics: [orders]
      schema: [{name: order_id, type: utf8}, {name: ts, type: timestamp_ms}]
    watermark: {column: ts, delay: 30s}
window: {size: 1m}
sql: SELECT window_start, window_end, count(*) AS n FROM orders GROUP BY window_start, window_end
sink:
  iceberg:
    catalog: {type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/wh"}
    namespace: shop
    table: counts
"#;

#[test]
fn sources_are_named_with_their_watermark_beside_them_and_source_is_the_shorthand() {
    let named = JobSpec::parse(NAMED_SOURCES).unwrap();
    assert_eq!(named.source_name(), "orders");
    assert_eq!(
        named.event_time().watermark.unwrap().delay_ms().unwrap(),
        30_000
    );
    assert_eq!(named.window.as_ref().unwrap().size_ms().unwrap(), 60_000);
    assert_eq!(JobSpec::parse(&named.to_json()).unwrap(), named);

    // The same job written with `source:` and its event time inside `source.kafka`, as
    // older specs (and job records kept by an earlier release) have it.
    let older = NAMED_SOURCES
        .replace("sources:\n  orders:\n", "source:\n")
        .replace("\n    kafka:\n      ", "\n  kafka:\n    ")
        .replace("\n      topics", "\n    topics")
        .replace("\n      schema", "\n    schema")
        .replace(
            "\n    watermark: {column: ts, delay: 30s}\nwindow: {size: 1m}",
            "\n    watermark: {column: ts, delay: 30s}\n    window: {size: 1m}",
        )
        .replace("FROM orders", "FROM source");
    assert!(older.contains("source:\n  kafka:\n"), "{older}");
    let older = JobSpec::parse(&older).unwrap();
    assert_eq!(older.source_name(), SOURCE_TABLE);
    assert_eq!(older.sources[SOURCE_TABLE], named.sources["orders"]);
    assert_eq!(
        (&older.window, &older.session, &older.dedup),
        (&named.window, &None, &None)
    );
}

#[test]
fn a_second_source_or_a_setting_in_two_places_is_refused_by_name() {
    let second = NAMED_SOURCES.replace(
        "window: {size: 1m}",
        "  payments:\n    kafka: {bootstrap_servers: b, topics: [payments], format: raw}\nwindow: {size: 1m}",
    );
    let message = error_text(&second);
    assert!(
        message.contains("sources")
            && message.contains("orders, payments")
            && message.contains("one source"),
        "{message}"
    );
    let both = format!("{NAMED_SOURCES}source: {{kafka: {{bootstrap_servers: b, topics: [t]}}}}\n");
    assert!(
        error_text(&both).contains("not both"),
        "{}",
        error_text(&both)
    );
    let twice = NAMED_SOURCES.replace(
        "      topics: [orders]",
        "      topics: [orders]\n      window: {size: 5m}",
    );
    let message = error_text(&twice);
    assert!(
        message.contains("window")
            && message.contains("given twice")
            && message.contains("sources.orders.kafka"),
        "{message}"
    );
    let bad_name = NAMED_SOURCES.replace("  orders:\n", "  'or ders':\n");
    assert_eq!(error_field(&bad_name), "sources.or ders");
    let clash = format!("{NAMED_SOURCES}tables: [{{name: orders, parquet: /tmp/p}}]\n");
    assert!(error_text(&clash).contains("already a table"));
}
