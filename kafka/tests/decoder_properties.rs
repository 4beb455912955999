//! Property tests of record decoding: no input panics or aborts the decoder, whatever the
//! format and the `on_malformed` mode, and a bad record never costs a valid one. Every
//! format added to `RecordFormat` belongs in `FORMATS`.

use proptest::prelude::*;
use sluice_core::spec::{KafkaSourceSpec, OnMalformed, RecordFormat};
use sluice_datagen::synthetic::{Order, ORDER_AVRO_SCHEMA, ORDER_SCHEMA_YAML};
use sluice_kafka::decode::{RawRecord, RecordDecoder};

const FORMATS: [RecordFormat; 3] = [RecordFormat::Json, RecordFormat::Raw, RecordFormat::Avro];
const MODES: [OnMalformed; 3] = [
    OnMalformed::Fail,
    OnMalformed::Skip,
    OnMalformed::DeadLetter,
];

fn decoder(format: RecordFormat, on_malformed: OnMalformed) -> RecordDecoder {
    let schema = match format {
        RecordFormat::Json | RecordFormat::Avro => ORDER_SCHEMA_YAML,
        RecordFormat::Raw => "[]",
    };
    let format_name = serde_json::to_value(format).unwrap();
    let yaml = format!(
        "{{bootstrap_servers: b, topics: [t], format: {}, schema: {schema}}}",
        format_name.as_str().unwrap()
    );
    let mut spec: KafkaSourceSpec = serde_yaml_ng::from_str(&yaml).unwrap();
    if format == RecordFormat::Avro {
        spec.avro = Some(sluice_core::avro::AvroSpec {
            schema_registry: None,
            schema: Some(ORDER_AVRO_SCHEMA.into()),
        });
    }
    RecordDecoder::new(&KafkaSourceSpec {
        on_malformed,
        ..spec
    })
    .unwrap()
}

/// A valid order (in `format`), `value`, and another valid order, at offsets 0, 1 and 2.
fn between_orders(format: RecordFormat, value: Option<Vec<u8>>) -> Vec<RawRecord> {
    let order = |offset: i64| {
        let order = Order::new(offset as u64, 0);
        RawRecord {
            offset,
            timestamp_ms: Some(0),
            key: None,
            value: Some(match format {
                RecordFormat::Avro => order.to_avro(),
                _ => order.to_json().into_bytes(),
            }),
        }
    };
    vec![
        order(0),
        RawRecord {
            offset: 1,
            timestamp_ms: None,
            key: Some(vec![0xff]),
            value,
        },
        order(2),
    ]
}

/// Decodes `value` between two valid records in every format and mode; checks that
/// nothing panicked (proptest reports a panic as a failure; an abort ends the test binary)
/// and that the valid records survive whenever the batch is not failed.
fn decodes_without_loss(value: Option<Vec<u8>>) -> Result<(), TestCaseError> {
    for format in FORMATS {
        let records = between_orders(format, value.clone());
        let records = &records;
        for mode in MODES {
            match decoder(format, mode).decode("t", 0, records) {
                Ok(decoded) => {
                    let rows = decoded.batch.num_rows() as u64;
                    prop_assert!(rows >= 2, "{format:?}/{mode:?}: a valid record was lost");
                    prop_assert_eq!(rows + decoded.malformed_skipped, records.len() as u64);
                    prop_assert_eq!(
                        decoded.dead_letters.len() as u64,
                        if mode == OnMalformed::DeadLetter {
                            decoded.malformed_skipped
                        } else {
                            0
                        }
                    );
                }
                Err(error) => {
                    prop_assert_eq!(mode, OnMalformed::Fail, "{}", error);
                    prop_assert!(error.to_string().contains("t/0@1"), "{}", error);
                }
            }
        }
    }
    Ok(())
}

/// JSON nested `kinds.len()` deep (true: an array, false: an object with key "k") around
/// `leaf`, built without recursion.
fn nested(kinds: &[bool], leaf: &str) -> Vec<u8> {
    let mut out = String::new();
    for &array in kinds {
        out.push_str(if array { "[" } else { "{\"k\":" });
    }
    out.push_str(leaf);
    for &array in kinds.iter().rev() {
        out.push(if array { ']' } else { '}' });
    }
    out.into_bytes()
}

/// An object with `width` fields named after the order schema's and others, holding
/// numbers, strings, nulls and small nests.
fn wide(width: usize, seed: u64) -> Vec<u8> {
    const NAMES: [&str; 8] = [
        "order_id",
        "customer_id",
        "product_id",
        "amount",
        "country",
        "ts",
        "extra",
        "x",
    ];
    let fields: Vec<String> = (0..width)
        .map(|i| {
            let r = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(i as u64)
                >> 33;
            let name = format!(
                "{}{}",
                NAMES[(r % 8) as usize],
                if r.is_multiple_of(3) { "" } else { "_" }
            );
            let value = match r % 5 {
                0 => (r as i64 - 1_000_000).to_string(),
                1 => format!("\"s{r}\""),
                2 => "null".into(),
                3 => format!("[{r}, {{\"a\": [{r}]}}]"),
                _ => format!("{}.5e{}", r % 100, r % 400),
            };
            format!("\"{name}\": {value}")
        })
        .collect();
    format!("{{{}}}", fields.join(", ")).into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(value in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decodes_without_loss(Some(value))?;
    }

    #[test]
    fn json_like_text(value in "[\\[\\]{}\":,0-9a-z \\\\.eE+-]{0,512}") {
        decodes_without_loss(Some(value.into_bytes()))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn deep_json(kinds in proptest::collection::vec(any::<bool>(), 0..150_000), leaf in "(1|\"s\"|null|\\[\\]|\\{\\})") {
        decodes_without_loss(Some(nested(&kinds, &leaf)))?;
    }

    #[test]
    fn wide_json(width in 0usize..5_000, seed in any::<u64>()) {
        decodes_without_loss(Some(wide(width, seed)))?;
    }

    #[test]
    fn tombstones_and_deep_keys(depth in 0usize..100_000) {
        decodes_without_loss(None)?;
        let deep_in_field = format!("{{\"order_id\": {}}}", String::from_utf8(nested(&vec![true; depth], "1")).unwrap());
        decodes_without_loss(Some(deep_in_field.into_bytes()))?;
    }
}
