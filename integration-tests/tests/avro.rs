//! Avro through a schema registry with real processes: records in Confluent's wire format,
//! written with two versions of a schema, land in the table decoded into the job's reader
//! schema (the older records get the newer field's default), and a record that does not
//! decode goes to the dead-letter table whole.

use apache_avro::types::{Record, Value};
use apache_avro::Schema;
use arrow::array::AsArray;
use sluice_integration_tests::Patched;
use sluice_integration_tests::TestCluster;
use sluice_testkit::schema_registry::SchemaRegistry;

const V1: &str = r#"{"type": "record", "name": "Order", "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "double"}]}"#;
const V2: &str = r#"{"type": "record", "name": "Order", "fields": [{"name": "order_id", "type": "string"}, {"name": "amount", "type": "double"}, {"name": "country", "type": "string", "default": "XX"}]}"#;
const RECORDS: usize = 200;

/// Order `i` in the wire format: even ones with schema 1 (V1), odd ones with schema 2.
fn framed(i: usize) -> Vec<u8> {
    let (id, text) = if i.is_multiple_of(2) {
        (1u32, V1)
    } else {
        (2, V2)
    };
    let schema = Schema::parse_str(text).unwrap();
    let mut record = Record::new(&schema).unwrap();
    record.put("order_id", format!("o-{i}"));
    record.put("amount", Value::Double(i as f64));
    if id == 2 {
        record.put("country", "DE");
    }
    let mut out = vec![0];
    out.extend(id.to_be_bytes());
    out.extend(apache_avro::to_avro_datum(&schema, record).unwrap());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_records_of_two_schema_versions_land_in_the_reader_schema() {
    let registry = SchemaRegistry::start(&[(1, V1), (2, V2)]);
    let cluster = TestCluster::start("orders", 2, 2).await.unwrap();
    let producer = sluice_datagen::synthetic::producer(&cluster.bootstrap_servers()).unwrap();
    for i in 0..=RECORDS {
        // The last record is not Avro at all.
        let value = if i == RECORDS {
            b"not avro".to_vec()
        } else {
            framed(i)
        };
        let record = rdkafka::producer::BaseRecord::<(), [u8]>::to("orders")
            .partition((i % 2) as i32)
            .payload(&value);
        producer.send(record).map_err(|(e, _)| e).unwrap();
    }
    rdkafka::producer::Producer::flush(&producer, std::time::Duration::from_secs(10)).unwrap();

    let json_source = format!(
        "    format: json\n    schema: {}\n",
        sluice_datagen::synthetic::ORDER_SCHEMA_YAML
    );
    let avro_source = format!(
        "    format: avro\n    avro: {{schema_registry: {{url: \"{}\"}}, schema: '{V2}'}}\n    schema: [{{name: order_id, type: utf8}}, {{name: amount, type: float64}}, {{name: country, type: utf8}}]\n    on_malformed: dead_letter\n",
        registry.url
    );
    let spec = cluster
        .spec(
            "avro-orders",
            "orders",
            "SELECT order_id, amount, country FROM source",
            "{available_now: true}",
            "    max_offsets_per_trigger: 50",
        )
        .patched(&json_source, &avro_source);
    assert!(spec.contains("format: avro"), "{spec}");
    // A reader schema that is not Avro is refused at submit, naming the field.
    let broken = spec.patched(
        V2,
        r#"{"type": "record", "name": "Order", "fields": [{"name": "x", "type": "nope"}]}"#,
    );
    let refused = cluster.submit(&broken).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("source.kafka.avro.schema"),
        "{}",
        refused.message()
    );

    let job = cluster.submit(&spec).await.unwrap();
    cluster.wait_until_finished(&job).await;

    let mut rows: Vec<(String, String)> = vec![];
    for batch in cluster.table_rows(&spec).await.unwrap() {
        let ids = batch.column_by_name("order_id").unwrap().as_string::<i32>();
        let countries = batch.column_by_name("country").unwrap().as_string::<i32>();
        for i in 0..batch.num_rows() {
            rows.push((ids.value(i).to_string(), countries.value(i).to_string()));
        }
    }
    rows.sort();
    let mut expected: Vec<(String, String)> = (0..RECORDS)
        .map(|i| {
            (
                format!("o-{i}"),
                if i.is_multiple_of(2) { "XX" } else { "DE" }.to_string(),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(rows, expected);
    let dead = cluster.dead_letter_rows(&spec).await.unwrap();
    let dead_rows: usize = dead.iter().map(|b| b.num_rows()).sum();
    assert_eq!(dead_rows, 1, "the record that is not Avro is a dead letter");
    let dead = dead.iter().find(|b| b.num_rows() > 0).unwrap();
    let values = arrow::compute::cast(
        dead.column_by_name("value").unwrap(),
        &arrow::datatypes::DataType::Binary,
    )
    .unwrap();
    assert_eq!(values.as_binary::<i32>().value(0), b"not avro");
    // Each executor fetched each schema at most once.
    assert!(
        registry.requests() <= 4,
        "{} schema fetches",
        registry.requests()
    );
}
