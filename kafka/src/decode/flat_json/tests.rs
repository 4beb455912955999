//! The flat JSON fast path against arrow-json, record by record.

use std::sync::Arc;

use arrow::datatypes::{Field, Schema};
use proptest::prelude::*;

use super::*;
use crate::decode::{decode_with, RawRecord};
use sluice_datagen::synthetic::Order;

fn schema() -> SchemaRef {
    let field = |name: &str, data_type: DataType| Field::new(name, data_type, true);
    Arc::new(Schema::new(vec![
        field("s", DataType::Utf8),
        field("b", DataType::Boolean),
        field("i", DataType::Int32),
        field("l", DataType::Int64),
        field("f", DataType::Float64),
        field("t", DataType::Timestamp(TimeUnit::Millisecond, None)),
        field("u", DataType::Timestamp(TimeUnit::Microsecond, None)),
    ]))
}

/// What arrow-json makes of `values`, as the record decoder runs it.
fn arrow_json(schema: &SchemaRef, values: &[Vec<u8>]) -> Result<RecordBatch, String> {
    let records: Vec<RawRecord> = values
        .iter()
        .enumerate()
        .map(|(offset, value)| RawRecord {
            offset: offset as i64,
            timestamp_ms: None,
            key: None,
            value: Some(value.clone()),
        })
        .collect();
    let mut decoder = arrow_json::ReaderBuilder::new(schema.clone())
        .with_batch_size(values.len() + 1)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decode_with(&mut decoder, records.iter(), schema)
}

fn fast(schema: &SchemaRef, values: &[Vec<u8>]) -> Option<RecordBatch> {
    FlatJsonDecoder::new(schema)
        .expect("a flat schema")
        .decode(values.iter().map(|v| Some(v.as_slice())))
}

#[test]
fn order_events_take_the_fast_path_and_decode_as_arrow_json_does() {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("order_id", DataType::Utf8, true),
        Field::new("customer_id", DataType::Int64, true),
        Field::new("product_id", DataType::Int64, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("ts", ts, true),
    ]));
    let values: Vec<Vec<u8>> = (0..500)
        .map(|seq| {
            Order::new(seq, 1_700_000_000_000 + seq as i64)
                .to_json()
                .into_bytes()
        })
        .collect();
    let fast = fast(&schema, &values).expect("orders are flat");
    assert_eq!(fast, arrow_json(&schema, &values).unwrap());
    assert_eq!(fast.num_rows(), 500);
}

#[test]
fn missing_and_unknown_fields_and_whitespace() {
    let values: Vec<Vec<u8>> = [
        r#"{}"#,
        r#" { "s" : "x" , "extra": [1] } "#,
        r#"{"extra": 1.5e3, "l": -12, "f": -0, "b": false, "u": 5, "t": null}"#,
        "{\"i\":\t2147483647,\n\"s\":\"\u{e9}\u{6f22}\"}",
        // Unknown keys that start as the next field's name does.
        r#"{"ss": "not s", "s": "s", "bb": true, "b": true, "iii": 1, "i": 2, "l": 3}"#,
    ]
    .iter()
    .map(|v| v.as_bytes().to_vec())
    .collect();
    // Nesting in an unknown field: given back.
    assert!(fast(&schema(), &values).is_none());
    let flat = &values[..1]
        .iter()
        .chain(&values[2..])
        .cloned()
        .collect::<Vec<_>>();
    let decoded = fast(&schema(), flat).expect("flat records");
    assert_eq!(decoded, arrow_json(&schema(), flat).unwrap());
    let f = decoded
        .column(4)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert!(
        f.value(1).is_sign_negative(),
        "-0 is negative zero, as arrow-json reads it"
    );
}

#[test]
fn escapes_are_unescaped_as_arrow_json_does() {
    let values = vec![
        br#"{"s": "tab\tquote\"slash\/back\\"}"#.to_vec(),
        br#"{"s": "\u00e9\u6F22 \ud83d\ude00\b\f\n\r"}"#.to_vec(),
        br#"{"x": "\"skipped\"", "s": "a"}"#.to_vec(),
    ];
    let decoded = fast(&schema(), &values).expect("escapes take the fast path");
    assert_eq!(decoded, arrow_json(&schema(), &values).unwrap());
    let s = decoded
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(s.value(0), "tab\tquote\"slash/back\\");
    assert_eq!(s.value(1), "\u{e9}\u{6f22} \u{1f600}\u{8}\u{c}\n\r");
}

#[test]
fn what_the_fast_path_gives_back() {
    for value in [
        r#"{"s": "a\xb"}"#,
        r#"{"s": "\ud83d"}"#,
        r#"{"s": "\ude00"}"#,
        r#"{"s": "\ud83d\u0041"}"#,
        r#"{"s": "\u12"}"#,
        r#"{"s\u0041": "a"}"#,
        r#"{"s": 1}"#,
        r#"{"l": "12"}"#,
        r#"{"l": 1.0}"#,
        r#"{"l": 0012}"#,
        r#"{"i": 2147483648}"#,
        r#"{"l": 1234567890123456789}"#,
        r#"{"f": 1e400}"#,
        r#"{"t": "2024-01-01T00:00:00Z"}"#,
        r#"{"s": "a", "s": "b"}"#,
        r#"{"b": tru}"#,
        r#"{"s": "a"} {"s": "b"}"#,
        r#"[1]"#,
        r#""#,
    ] {
        assert!(
            fast(&schema(), &[value.as_bytes().to_vec()]).is_none(),
            "{value}"
        );
    }
    for invalid in [
        b"{\"s\": \"\xff\"}".to_vec(),
        b"{\"x\": \"\xff\"}".to_vec(),
        b"{\"\xff\": 1}".to_vec(),
    ] {
        assert!(
            fast(&schema(), &[invalid]).is_none(),
            "invalid UTF-8 is given back"
        );
    }
}

/// A value in JSON text: of every kind a field may get, well formed or not.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<i32>().prop_map(|v| v.to_string()),
        (-1000i64..1000).prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<f64>().prop_map(|v| format!("{v:e}")),
        (-1e6f64..1e6).prop_map(|v| format!("{v}")),
        prop::sample::select(vec![
            "-0",
            "0",
            "007",
            "-",
            "1.",
            "1e",
            "1E+2",
            "2.5E-3",
            "1e400",
            "9007199254740993",
            "123456789012345678",
            "1234567890123456789",
            "\"12\"",
            "[]",
            "{}",
            "[1, 2]",
            "{\"a\": 1}",
            "nul",
            "\"a\\\"b\"",
            "\"\\u00e9\"",
        ])
        .prop_map(str::to_string),
        "[a-zA-Z0-9 \u{e9}\u{6f22}\u{1}\t]{0,8}".prop_map(|s| format!("\"{s}\"")),
        "[a-z]{0,40}[a-z\u{e9}\"]{0,3}[a-z]{0,40}".prop_map(|s| format!("\"{s}\"")),
        short_decimal(),
        escaped_string(),
    ]
}

/// A decimal without exponent of up to 17 digits, some of them after the point.
fn short_decimal() -> impl Strategy<Value = String> {
    (any::<bool>(), "[0-9]{1,9}", "[0-9]{1,8}").prop_map(|(negative, integer, fraction)| {
        let integer = integer.trim_start_matches('0');
        let integer = if integer.is_empty() { "0" } else { integer };
        format!("{}{integer}.{fraction}", if negative { "-" } else { "" })
    })
}

/// A JSON string of plain pieces and escapes: mostly valid ones, now and then one
/// arrow-json refuses.
fn escaped_string() -> impl Strategy<Value = String> {
    let valid = prop::sample::select(vec![
        "a",
        "\u{e9}",
        " ",
        "\\n",
        "\\\"",
        "\\\\",
        "\\/",
        "\\b",
        "\\f",
        "\\r",
        "\\t",
        "\\u00e9",
        "\\u00E9",
        "\\u0000",
        "\\ud83d\\ude00",
        "\\uD83D\\uDE00",
    ]);
    let invalid = prop::sample::select(vec![
        "\\ud83d",
        "\\ude00",
        "\\ud83dx",
        "\\ud83d\\u0041",
        "\\x",
        "\\u12",
        "\\u12g4",
    ]);
    let piece = prop_oneof![12 => valid, 1 => invalid];
    prop::collection::vec(piece, 0..6).prop_map(|pieces| format!("\"{}\"", pieces.concat()))
}

/// A value as the field `key` usually gets it: of its column's type, or null.
fn typed_value(key: &'static str) -> BoxedStrategy<String> {
    let null = Just("null".to_string());
    match key {
        "s" => prop_oneof![
            null,
            "[a-zA-Z0-9 \u{e9}\u{6f22}\u{1}\t]{0,8}".prop_map(|s| format!("\"{s}\"")),
            escaped_string(),
        ]
        .boxed(),
        "b" => prop::sample::select(vec!["true", "false", "null"])
            .prop_map(str::to_string)
            .boxed(),
        "i" => prop_oneof![null, any::<i32>().prop_map(|v| v.to_string())].boxed(),
        "f" => prop_oneof![
            null,
            any::<f64>().prop_map(|v| format!("{v:?}")),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            any::<i64>().prop_map(|v| v.to_string()),
            (-1e6f64..1e6).prop_map(|v| format!("{v}")),
            short_decimal(),
        ]
        .boxed(),
        "l" | "t" | "u" => prop_oneof![
            null,
            (-999_999_999_999_999_999i64..=999_999_999_999_999_999).prop_map(|v| v.to_string()),
            (-1000i64..1000).prop_map(|v| v.to_string()),
        ]
        .boxed(),
        _ => value().boxed(),
    }
}

/// A record: fields of the schema and others, in any order, sometimes twice, mostly
/// of their column's type, with whitespace, now and then not an object at all.
fn record() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "s", "b", "i", "l", "f", "t", "u", "x", "S", "ss", "i2",
    ]);
    let field = key.prop_flat_map(|key| {
        let value = prop_oneof![6 => typed_value(key), 1 => value()];
        (Just(key), value)
    });
    let space = prop::sample::select(vec!["", " ", "\n", "\t "]);
    let object = prop::collection::vec((field, space), 0..9).prop_map(|fields| {
        let body: Vec<String> = fields
            .into_iter()
            .map(|((k, v), ws)| format!("{ws}\"{k}\"{ws}:{ws}{v}{ws}"))
            .collect();
        format!("{{{}}}", body.join(","))
    });
    prop_oneof![
        8 => object,
        1 => prop::sample::select(vec!["", "[]", "{", "{}{}", "{\"s\":\"a\"}x", " {} "])
            .prop_map(str::to_string),
    ]
}

#[test]
fn plain_ascii_ends_at_the_first_quote_backslash_or_other_byte() {
    for length in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100] {
        let plain = "n".repeat(length);
        assert_eq!(plain_ascii_length(plain.as_bytes()), length);
        for end in ["\"", "\\", "\u{e9}", "\u{7f}\u{80}"] {
            let text = format!("{plain}{end}nn");
            let expected = length + usize::from(end.starts_with('\u{7f}'));
            assert_eq!(plain_ascii_length(text.as_bytes()), expected, "{text:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever the fast path takes, it decodes exactly as arrow-json does.
    #[test]
    fn the_fast_path_agrees_with_arrow_json(records in prop::collection::vec(record(), 1..6)) {
        let values: Vec<Vec<u8>> = records.iter().map(|r| r.as_bytes().to_vec()).collect();
        if let Some(fast) = fast(&schema(), &values) {
            let expected = arrow_json(&schema(), &values);
            prop_assert_eq!(Ok(fast), expected, "{:?}", records);
        }
    }
}
