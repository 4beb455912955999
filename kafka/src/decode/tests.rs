//! Decoding records: formats, malformed records by policy, windows at decode.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{Float64Type, Int64Type};

use super::*;
use sluice_core::spec::{FieldSpec, StartingOffsets};

fn spec(format: RecordFormat, on_malformed: OnMalformed) -> KafkaSourceSpec {
    let field = |name: &str, ty: &str| FieldSpec {
        name: name.into(),
        data_type: ty.into(),
        nullable: true,
        fields: vec![],
    };
    KafkaSourceSpec {
        bootstrap_servers: "b".into(),
        topics: vec!["t".into()],
        topic_pattern: None,
        starting_offsets: StartingOffsets::Earliest,
        max_offsets_per_trigger: None,
        format,
        avro: None,
        schema: if format == RecordFormat::Json {
            vec![
                field("id", "int64"),
                field("amount", "float64"),
                field("name", "utf8"),
            ]
        } else {
            vec![]
        },
        on_malformed,
        fail_on_data_loss: true,
        max_record_bytes: None,
        max_nesting_depth: None,
        properties: Default::default(),
    }
}

fn record(offset: i64, value: &str) -> RawRecord {
    RawRecord {
        offset,
        timestamp_ms: Some(1_700_000_000_000 + offset),
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(value.as_bytes().to_vec()),
    }
}

#[test]
fn json_records_decode_with_metadata_columns() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
    let records = vec![
        record(7, r#"{"id": 1, "amount": 2.5, "name": "a", "extra": true}"#),
        record(8, r#"{"id": 2, "name": null}"#),
    ];
    let decoded = decoder.decode("t", 3, &records).unwrap();
    let batch = decoded.batch;
    assert_eq!(batch.num_rows(), 2);
    assert_eq!(batch.schema(), decoder.schema());
    let ids = batch
        .column_by_name("id")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(ids.values(), &[1, 2]);
    let amounts = batch
        .column_by_name("amount")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert_eq!(amounts.value(0), 2.5);
    assert!(amounts.is_null(1));
    let offsets = batch
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(offsets.values(), &[7, 8]);
    let partitions = batch.column_by_name("_partition").unwrap();
    assert_eq!(
        partitions
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(1),
        3
    );
    let keys = batch.column_by_name("_key").unwrap().as_binary::<i32>();
    assert_eq!(keys.value(1), b"k8");
    assert_eq!(
        batch
            .column_by_name("_topic")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "t"
    );
}

#[test]
fn a_decoder_keeping_some_columns_builds_those_as_the_full_decoder_does() {
    let full = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Skip)).unwrap();
    let columns: BTreeSet<String> = ["amount", "_offset"].map(String::from).into();
    let kept = full.clone().keeping(&columns);
    let values = [
        r#"{"id": 1, "amount": 2.5, "name": "a", "extra": true}"#,
        r#"{"id": 2, "name": null}"#,
        // Nested: the fast path gives the chunk back to arrow-json.
        r#"{"id": 3, "amount": 4, "extra": {"x": [1]}}"#,
    ];
    for chunk in [&values[..2], &values[..]] {
        let records: Vec<RawRecord> = (chunk.iter().enumerate())
            .map(|(i, value)| record(i as i64, value))
            .collect();
        let whole = full.decode("t", 0, &records).unwrap().batch;
        let batch = kept.decode("t", 0, &records).unwrap().batch;
        assert_eq!(batch.schema(), kept.schema());
        let names: Vec<String> = (kept.schema().fields().iter())
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["amount", "_offset"]);
        let expected = whole
            .project(&[
                whole.schema().index_of("amount").unwrap(),
                whole.schema().index_of("_offset").unwrap(),
            ])
            .unwrap();
        assert_eq!(batch.columns(), expected.columns());
    }
    // A value of a column no query reads is checked as strictly: these records are
    // malformed for both decoders, on the fast path and off it.
    for bad in [
        r#"{"id": "abc", "amount": 1.0}"#,
        r#"{"name": 7, "amount": 1.0}"#,
    ] {
        let records = vec![record(0, r#"{"id": 1, "amount": 1.0}"#), record(1, bad)];
        for decoder in [&full, &kept] {
            let decoded = decoder.decode("t", 0, &records).unwrap();
            assert_eq!(decoded.batch.num_rows(), 1, "{bad}");
            assert_eq!(decoded.malformed_skipped, 1, "{bad}");
        }
    }
    // Whatever the full decoder makes of a record, the keeping one makes the same.
    for value in [
        r#"{"id": 1.5, "amount": 1.0}"#,
        r#"{"id": 99999999999999999999, "amount": 1.0}"#,
        r#"{"id": 1, "amount": 1e400}"#,
    ] {
        let records = vec![record(0, value)];
        let decoded = |decoder: &RecordDecoder| {
            let decoded = decoder.decode("t", 0, &records).unwrap();
            (decoded.batch.num_rows(), decoded.malformed_skipped)
        };
        assert_eq!(decoded(&kept), decoded(&full), "{value}");
    }
    // A count reads no column: rows without columns.
    let none = full.clone().keeping(&BTreeSet::new());
    let records = vec![record(0, values[0]), record(1, values[1])];
    let batch = none.decode("t", 0, &records).unwrap().batch;
    assert_eq!((batch.num_rows(), batch.num_columns()), (2, 0));
}

#[test]
fn malformed_record_fails_naming_its_coordinates() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
    for bad in [
        r#"{"id": 1"#,
        "not json",
        r#"{"id": "abc"}"#,
        r#"{"id": 1} {"id": 2}"#,
    ] {
        let records = vec![
            record(10, r#"{"id": 1}"#),
            record(11, bad),
            record(12, r#"{"id": 3}"#),
        ];
        match decoder.decode("orders", 2, &records) {
            Err(Error::MalformedRecord {
                topic,
                partition,
                offset,
                ..
            }) => {
                assert_eq!(
                    (topic.as_str(), partition, offset),
                    ("orders", 2, 11),
                    "{bad}"
                );
            }
            other => panic!("{bad}: expected a malformed record error, got {other:?}"),
        }
    }
}

#[test]
fn chunks_decode_alone_whatever_came_before() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
    let ids = |decoded: DecodedBatch| -> Vec<i64> {
        let ids = decoded.batch.column_by_name("id").unwrap().clone();
        ids.as_primitive::<Int64Type>().values().to_vec()
    };
    let first = vec![record(1, r#"{"id": 1}"#), record(2, r#"{"id": 2}"#)];
    assert_eq!(ids(decoder.decode("t", 0, &first).unwrap()), [1, 2]);
    // A chunk that fails half-way through a value leaves nothing behind.
    let broken = vec![record(3, r#"{"id": 3}"#), record(4, r#"{"id": 4"#)];
    assert!(decoder.decode("t", 0, &broken).is_err());
    let next = vec![record(5, r#"{"id": 5}"#)];
    assert_eq!(ids(decoder.decode("t", 0, &next).unwrap()), [5]);
    // Clones share kept decoders; a chunk larger than a kept decoder takes gets its own.
    let large: Vec<RawRecord> = (0..KEPT_DECODER_RECORDS as i64 + 5)
        .map(|i| record(i, &format!(r#"{{"id": {i}}}"#)))
        .collect();
    let decoded = ids(decoder.clone().decode("t", 0, &large).unwrap());
    assert_eq!(decoded.len(), large.len());
    assert_eq!(decoded.last(), Some(&(KEPT_DECODER_RECORDS as i64 + 4)));
    assert_eq!(ids(decoder.decode("t", 0, &first).unwrap()), [1, 2]);
}

#[test]
fn skipped_malformed_records_are_counted() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Skip)).unwrap();
    let mut tombstone = record(12, "");
    tombstone.value = None;
    let records = vec![
        record(10, r#"{"id": 1}"#),
        record(11, "{oops"),
        tombstone,
        record(13, r#"{"id": 4}"#),
    ];
    let decoded = decoder.decode("t", 0, &records).unwrap();
    assert_eq!(decoded.malformed_skipped, 2);
    let offsets = decoded
        .batch
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    assert_eq!(offsets.values(), &[10, 13]);
}

#[test]
fn dead_letters_keep_the_record_and_the_reason() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::DeadLetter)).unwrap();
    let records = vec![
        record(10, r#"{"id": 1}"#),
        record(11, "{oops"),
        record(12, r#"{"id": 3}"#),
    ];
    let decoded = decoder.decode("t", 4, &records).unwrap();
    assert_eq!(decoded.batch.num_rows(), 2);
    assert_eq!(decoded.malformed_skipped, 1);
    let letter = &decoded.dead_letters[0];
    assert_eq!((letter.partition, letter.record.offset), (4, 11));
    assert_eq!(letter.record.value.as_deref(), Some(&b"{oops"[..]));
    assert!(!letter.error.is_empty());
    let batch = dead_letter_batch(&decoded.dead_letters).unwrap();
    assert_eq!(batch.num_rows(), 1);
    assert_eq!(batch.schema(), dead_letter_schema());
}

#[test]
fn oversized_records_are_malformed() {
    let mut source = spec(RecordFormat::Raw, OnMalformed::Fail);
    source.max_record_bytes = Some(8);
    let decoder = RecordDecoder::new(&source).unwrap();
    let err = decoder
        .decode("t", 0, &[record(0, "short"), record(1, "far too long")])
        .unwrap_err();
    match err {
        Error::MalformedRecord {
            offset, message, ..
        } => {
            assert_eq!(offset, 1);
            assert!(message.contains("max_record_bytes"), "{message}");
        }
        other => panic!("expected a malformed record, got {other:?}"),
    }
}

#[test]
fn raw_records_keep_their_bytes() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Raw, OnMalformed::Fail)).unwrap();
    let decoded = decoder
        .decode("t", 0, &[record(0, "\u{1}anything")])
        .unwrap();
    let values = decoded
        .batch
        .column_by_name("value")
        .unwrap()
        .as_binary::<i32>();
    assert_eq!(values.value(0), b"\x01anything");
}

#[test]
fn no_records_make_an_empty_batch() {
    let decoder = RecordDecoder::new(&spec(RecordFormat::Json, OnMalformed::Fail)).unwrap();
    let decoded = decoder.decode::<RawRecord>("t", 0, &[]).unwrap();
    assert_eq!(decoded.batch.num_rows(), 0);
    assert_eq!(decoded.batch.schema(), decoder.schema());
}
/// Orders at even offsets, one hostile value after each: `(records, valid offsets)`.
fn orders_among_hostile_values() -> (Vec<RawRecord>, Vec<i64>) {
    let mut records = Vec::new();
    let mut valid = Vec::new();
    for (i, (_, value)) in sluice_testkit::hostile_values().into_iter().enumerate() {
        let offset = 2 * i as i64;
        let order = sluice_datagen::synthetic::Order::new(i as u64, 0).to_json();
        records.push(record(offset, &order));
        valid.push(offset);
        records.push(RawRecord {
            value,
            ..record(offset + 1, "")
        });
    }
    (records, valid)
}

fn order_spec(on_malformed: OnMalformed) -> KafkaSourceSpec {
    let yaml = format!(
        "{{bootstrap_servers: b, topics: [t], format: json, schema: {}}}",
        sluice_datagen::synthetic::ORDER_SCHEMA_YAML
    );
    KafkaSourceSpec {
        on_malformed,
        ..serde_yaml_ng::from_str(&yaml).unwrap()
    }
}

/// No input crashes the decoder (a stack overflow would abort this test binary):
/// every valid record decodes, the deep ones are malformed for their depth.
#[test]
fn hostile_values_among_valid_records_never_crash_the_decoder() {
    let (records, valid) = orders_among_hostile_values();
    let skip = RecordDecoder::new(&order_spec(OnMalformed::Skip)).unwrap();
    let decoded = skip.decode("t", 0, &records).unwrap();
    let offsets = decoded
        .batch
        .column_by_name("_offset")
        .unwrap()
        .as_primitive::<Int64Type>();
    for offset in &valid {
        assert!(
            offsets.values().contains(offset),
            "valid record {offset} lost"
        );
    }
    assert_eq!(
        decoded.malformed_skipped as usize + decoded.batch.num_rows(),
        records.len()
    );

    let dead_letter = RecordDecoder::new(&order_spec(OnMalformed::DeadLetter)).unwrap();
    let decoded = dead_letter.decode("t", 0, &records).unwrap();
    let deep: Vec<&DeadLetter> = decoded
        .dead_letters
        .iter()
        .filter(|l| l.error.contains("max_nesting_depth (64)"))
        .collect();
    assert_eq!(
        deep.iter().map(|l| l.record.offset).collect::<Vec<_>>(),
        vec![1, 3, 5, 7],
        "the four deep values are malformed for their depth"
    );
    assert_eq!(
        deep[0].record.value.as_ref().unwrap().len(),
        400_000,
        "kept whole"
    );
    for letter in &decoded.dead_letters {
        assert!(
            letter.error.len() < 1_000,
            "bounded reason: {}",
            letter.error.len()
        );
    }

    let fail = RecordDecoder::new(&order_spec(OnMalformed::Fail)).unwrap();
    match fail.decode("t", 0, &records) {
        Err(Error::MalformedRecord {
            offset, message, ..
        }) => {
            assert_eq!(offset, 1);
            assert!(message.contains("max_nesting_depth"), "{message}");
        }
        other => panic!("expected a malformed record, got {other:?}"),
    }
}

#[test]
fn sliding_windows_repeat_a_record_in_each_of_its_windows() {
    let ts =
        |s: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![Some(s), None])) };
    let columns = with_windows(vec![ts(25_000)], 0, 20_000, 10_000).unwrap();
    let starts: Vec<Option<i64>> = columns[1]
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(starts, vec![Some(20_000), Some(10_000), None]);
    let tumbling = with_windows(vec![ts(25_000)], 0, 20_000, 20_000).unwrap();
    assert_eq!(tumbling[0].len(), 2, "one row per record");
}
