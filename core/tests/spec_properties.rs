//! Property tests of spec parsing: no text, however broken, panics the parser; a spec it
//! refuses gets an error naming where (a field, or a line and column). The seeds are the
//! examples shipped with Sluice plus a spec using every section, mutated byte by byte.

use proptest::prelude::*;
use sluice_core::spec::JobSpec;
use sluice_core::Error;

/// A spec with every section: properties and secrets, a watermark, a window in SQL,
/// partitioning, compaction, a dead-letter table, parallelism.
const FULL_SPEC: &str = r#"
name: revenue
source:
  kafka:
    bootstrap_servers: "broker:9092"
    topics: [orders]
    starting_offsets: {orders: {0: 5, 1: 7}}
    max_offsets_per_trigger: 100000
    format: json
    schema: [{name: order_id, type: utf8}, {name: amount, type: float64}, {name: country, type: utf8}, {name: ts, type: timestamp_ms}]
    on_malformed: dead_letter
    properties: {client.id: sluice, sasl.password: "${env:KAFKA_PASSWORD}"}
    watermark: {column: ts, delay: 30s}
trigger: {processing_time: 500ms}
sql: "SELECT window_start, window_end, country, sum(amount) AS revenue FROM source GROUP BY tumble(ts, INTERVAL '1 minute'), country"
sink:
  iceberg:
    catalog: {type: sql, uri: "sqlite:///tmp/c.db", warehouse: "file:///tmp/w"}
    namespace: shop
    table: revenue
    partition_by: ["day(window_start)", country]
    compaction: {min_files: 8, budget: 5s}
parallelism: {max_records_per_task: 20000, min_records_per_task: 1}
"#;

const SEEDS: [&str; 5] = [
    FULL_SPEC,
    include_str!("../../examples/orders-filter.yaml"),
    include_str!("../../examples/orders-dedup.yaml"),
    include_str!("../../examples/customers-per-country.yaml"),
    include_str!("../../examples/nexmark-q1.yaml"),
];

/// An edit of a seed spec: at a relative position, replace, delete or repeat bytes.
#[derive(Debug, Clone)]
enum Edit {
    Replace(f64, u8),
    Delete(f64, usize),
    Repeat(f64, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0, any::<u8>()).prop_map(|(at, b)| Edit::Replace(at, b)),
        (0.0..1.0, 1usize..30).prop_map(|(at, n)| Edit::Delete(at, n)),
        (0.0..1.0, 1usize..60).prop_map(|(at, n)| Edit::Repeat(at, n)),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> String {
    let mut bytes = seed.as_bytes().to_vec();
    for edit in edits {
        if bytes.is_empty() {
            break;
        }
        let at = |f: f64, len: usize| ((f * len as f64) as usize).min(len - 1);
        match *edit {
            Edit::Replace(f, b) => {
                let i = at(f, bytes.len());
                bytes[i] = b;
            }
            Edit::Delete(f, n) => {
                let i = at(f, bytes.len());
                let end = (i + n).min(bytes.len());
                bytes.drain(i..end);
            }
            Edit::Repeat(f, n) => {
                let i = at(f, bytes.len());
                let end = (i + n).min(bytes.len());
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A refusal names where the problem is.
fn assert_named(text: &str, result: Result<JobSpec, Error>) {
    if let Err(error) = result {
        match &error {
            Error::InvalidSpec { field, message } => {
                assert!(
                    !field.is_empty() && !message.is_empty(),
                    "unnamed refusal {error:?} of {text:?}"
                );
            }
            other => assert!(!other.to_string().is_empty(), "empty error for {text:?}"),
        }
    }
}

#[test]
fn every_seed_parses() {
    for seed in SEEDS {
        JobSpec::parse(seed).unwrap_or_else(|e| panic!("{e}\n{seed}"));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn mutated_specs_are_parsed_or_refused_by_name(
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let text = apply(SEEDS[seed], &edits);
        assert_named(&text, JobSpec::parse(&text));
    }

    #[test]
    fn arbitrary_text_is_refused_by_name(text in ".{0,400}") {
        assert_named(&text, JobSpec::parse(&text));
    }
}
