//! Avro records through a schema registry: values in Confluent's wire format, written
//! with two versions of a schema, decode into the job's reader schema (the newer one's
//! default fills the older records); each writer schema is fetched once; unknown schema
//! ids and bodies that do not decode follow `on_malformed`.

use apache_avro::types::{Record, Value};
use apache_avro::Schema;
use arrow::array::AsArray;
use sluice_core::spec::{KafkaSourceSpec, OnMalformed};
use sluice_kafka::decode::{RawRecord, RecordDecoder};
use sluice_testkit::schema_registry::SchemaRegistry;

const V1: &str = r#"{"type": "record", "name": "Order", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "amount", "type": "double"}]}"#;
const V2: &str = r#"{"type": "record", "name": "Order", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "amount", "type": "double"},
    {"name": "country", "type": "string", "default": "XX"}]}"#;

/// Order `id` in the wire format of schema `schema_id` (`schema`).
fn framed(schema_id: u32, schema: &str, id: &str, country: Option<&str>) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let mut record = Record::new(&schema).unwrap();
    record.put("order_id", id);
    record.put("amount", Value::Double(1.5));
    if let Some(country) = country {
        record.put("country", country);
    }
    let mut out = vec![0];
    out.extend(schema_id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
    out
}

fn decoder(registry: &SchemaRegistry, on_malformed: OnMalformed) -> RecordDecoder {
    let yaml = format!(
        r#"{{bootstrap_servers: b, topics: [t], format: avro,
            avro: {{schema_registry: {{url: "{}"}}, schema: {:?}}},
            schema: [{{name: order_id, type: utf8}}, {{name: amount, type: float64}}, {{name: country, type: utf8}}]}}"#,
        registry.url,
        V2.replace('\n', " ")
    );
    let spec: KafkaSourceSpec = serde_yaml_ng::from_str(&yaml).unwrap();
    RecordDecoder::new(&KafkaSourceSpec {
        on_malformed,
        ..spec
    })
    .unwrap()
}

fn record(offset: i64, value: Vec<u8>) -> RawRecord {
    RawRecord {
        offset,
        timestamp_ms: Some(0),
        key: None,
        value: Some(value),
    }
}

#[test]
fn records_of_two_schema_versions_decode_into_the_reader_schema() {
    let registry = SchemaRegistry::start(&[(1, V1), (2, V2)]);
    let decoder = decoder(&registry, OnMalformed::DeadLetter);
    let records = vec![
        record(0, framed(1, V1, "o-0", None)),
        record(1, framed(2, V2, "o-1", Some("DE"))),
        record(2, framed(1, V1, "o-2", None)),
        record(3, framed(7, V1, "o-3", None)),
        record(4, vec![0, 0, 0, 0, 2, 0xff]),
        record(5, b"{\"order_id\": \"json\"}".to_vec()),
    ];
    let decoded = decoder.decode("t", 0, &records).unwrap();
    let batch = &decoded.batch;
    let column = |name: &str| {
        let column = batch.column_by_name(name).unwrap().as_string::<i32>();
        (0..batch.num_rows())
            .map(|i| column.value(i).to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(column("order_id"), ["o-0", "o-1", "o-2"]);
    assert_eq!(
        column("country"),
        ["XX", "DE", "XX"],
        "V1 records get V2's default"
    );
    let reasons: Vec<(i64, String)> = decoded
        .dead_letters
        .iter()
        .map(|d| (d.record.offset, d.error.clone()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].1.contains("schema 7"), "{reasons:?}");
    assert!(reasons[1].1.contains("Avro"), "{reasons:?}");
    assert!(reasons[2].1.contains("wire format"), "{reasons:?}");
    assert_eq!(
        decoded.dead_letters[2].record.value.as_deref(),
        Some(&b"{\"order_id\": \"json\"}"[..]),
        "a dead letter keeps the record as it came"
    );
    // Schemas 1 and 2 fetched once each (7 is asked for, and not found, once).
    assert_eq!(registry.requests(), 3);
    decoder.decode("t", 0, &records[..3]).unwrap();
    assert_eq!(registry.requests(), 3, "known schemas are cached");
}

#[test]
fn an_undecodable_record_fails_the_batch_when_asked_to() {
    let registry = SchemaRegistry::start(&[(2, V2)]);
    let decoder = decoder(&registry, OnMalformed::Fail);
    let records = vec![
        record(0, framed(2, V2, "o-0", Some("DE"))),
        record(1, framed(9, V2, "o-1", Some("DE"))),
    ];
    let error = decoder.decode("t", 3, &records).unwrap_err().to_string();
    assert!(
        error.contains("t/3@1") && error.contains("schema 9"),
        "{error}"
    );
}
