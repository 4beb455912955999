//! Synthetic order events for the demo, `sluice produce`, benchmarks and tests, and the
//! producer loop every generator (orders, [`crate::nexmark`]) shares.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use sluice_core::error::{Error, Result};

/// Countries the generator draws from.
pub const COUNTRIES: [&str; 5] = ["DE", "FR", "NL", "US", "JP"];
/// Number of distinct products.
pub const PRODUCTS: u64 = 50;

/// A fixed pseudo-random mix of `seq` (splitmix64), so events are reproducible.
fn mix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The fields of order event `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: String,
    pub customer_id: i64,
    pub product_id: i64,
    /// In cents, so sums are exact; the JSON carries `amount` = cents / 100.
    pub amount_cents: i64,
    pub country: &'static str,
    pub ts_ms: i64,
}

impl Order {
    pub fn new(seq: u64, ts_ms: i64) -> Order {
        let r = mix(seq);
        Order {
            order_id: format!("o-{seq}"),
            customer_id: (r % 10_000) as i64,
            product_id: ((r >> 16) % PRODUCTS) as i64 + 1,
            amount_cents: ((r >> 24) % 50_000) as i64 + 100,
            country: COUNTRIES[((r >> 40) % COUNTRIES.len() as u64) as usize],
            ts_ms,
        }
    }

    pub fn to_json(&self) -> String {
        format!(
            r#"{{"order_id":"{}","customer_id":{},"product_id":{},"amount":{}.{:02},"country":"{}","ts":{}}}"#,
            self.order_id,
            self.customer_id,
            self.product_id,
            self.amount_cents / 100,
            self.amount_cents % 100,
            self.country,
            self.ts_ms
        )
    }
}

/// The Avro schema of order events (the same fields as [`ORDER_SCHEMA_YAML`]).
pub const ORDER_AVRO_SCHEMA: &str = r#"{"type": "record", "name": "Order", "fields": [
    {"name": "order_id", "type": "string"},
    {"name": "customer_id", "type": "long"},
    {"name": "product_id", "type": "long"},
    {"name": "amount", "type": "double"},
    {"name": "country", "type": "string"},
    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#;

impl Order {
    /// The order as a bare Avro body of [`ORDER_AVRO_SCHEMA`].
    pub fn to_avro(&self) -> Vec<u8> {
        use apache_avro::types::Value;
        let schema = apache_avro::Schema::parse_str(ORDER_AVRO_SCHEMA).expect("order schema");
        let record = Value::Record(vec![
            ("order_id".into(), Value::String(self.order_id.clone())),
            ("customer_id".into(), Value::Long(self.customer_id)),
            ("product_id".into(), Value::Long(self.product_id)),
            (
                "amount".into(),
                Value::Double(self.amount_cents as f64 / 100.0),
            ),
            ("country".into(), Value::String(self.country.to_string())),
            ("ts".into(), Value::TimestampMillis(self.ts_ms)),
        ]);
        apache_avro::to_avro_datum(&schema, record).expect("an order encodes")
    }
}

/// The source schema of order events, as a spec's YAML list.
pub const ORDER_SCHEMA_YAML: &str =
    "[{name: order_id, type: utf8}, {name: customer_id, type: int64}, \
{name: product_id, type: int64}, {name: amount, type: float64}, {name: country, type: utf8}, \
{name: ts, type: timestamp_ms}]";

/// A producer tuned for loading many small JSON events (batched, lz4-compressed); a
/// batch waits at most 5 ms to fill, so a stream's records reach Kafka promptly.
pub fn producer(bootstrap_servers: &str) -> Result<BaseProducer> {
    producer_lingering(bootstrap_servers, 5)
}

/// A producer for preloading a topic as fast as possible: a batch waits up to 100 ms to
/// fill, so batches hold about as many records as a busy producer's (a thousand or more
/// per partition at full speed instead of tens), and reading them back takes as many
/// fetches as it would from a topic written under load.
pub fn bulk_producer(bootstrap_servers: &str) -> Result<BaseProducer> {
    producer_lingering(bootstrap_servers, 100)
}

fn producer_lingering(bootstrap_servers: &str, linger_ms: u32) -> Result<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("linger.ms", linger_ms.to_string())
        .set("batch.num.messages", "10000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("log_level", "3")
        .create()
        .map_err(|e| Error::Kafka {
            bootstrap_servers: bootstrap_servers.to_string(),
            message: e.to_string(),
        })
}

/// Produces events `first..first + count` to `topic`, keyed by customer, spread over
/// `partitions` round-robin; at `rate` events/s when given. Blocking; calls `progress`
/// with the number sent so far about every 10,000 events. Returns when all are acked.
pub fn produce_orders(
    producer: &BaseProducer,
    topic: &str,
    partitions: i32,
    first: u64,
    count: u64,
    rate: Option<f64>,
    progress: impl FnMut(u64),
) -> Result<()> {
    let events = EventRange { first, count, rate };
    produce_events(
        producer,
        topic,
        partitions,
        events,
        progress,
        |seq, now_ms| {
            let order = Order::new(seq, now_ms);
            (Some(order.customer_id.to_string()), order.to_json())
        },
    )
}

/// Which events to produce, and how fast.
#[derive(Debug, Clone, Copy)]
pub struct EventRange {
    pub first: u64,
    pub count: u64,
    /// Events per second; as fast as the broker takes them when absent.
    pub rate: Option<f64>,
}

/// Produces `events` to `topic`, event `seq` (stamped with the current time) being the
/// key and value `event(seq, now_ms)` returns, spread over `partitions` round-robin.
/// Blocking; calls `progress` with the number sent so far about every 10,000 events.
/// Returns when all are acked.
pub fn produce_events(
    producer: &BaseProducer,
    topic: &str,
    partitions: i32,
    events: EventRange,
    mut progress: impl FnMut(u64),
    event: impl Fn(u64, i64) -> (Option<String>, String),
) -> Result<()> {
    let started = Instant::now();
    let kafka_err = |message: String| Error::Kafka {
        bootstrap_servers: String::new(),
        message,
    };
    for i in 0..events.count {
        let seq = events.first + i;
        let now_ms = sluice_core::now_ms();
        let (key, payload) = event(seq, now_ms);
        let partition = (seq % partitions.max(1) as u64) as i32;
        loop {
            let mut record = BaseRecord::to(topic)
                .payload(&payload)
                .partition(partition)
                .timestamp(now_ms);
            if let Some(key) = &key {
                record = record.key(key);
            }
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(kafka_err(format!("producing to {topic}: {e}"))),
            }
        }
        if let Some(rate) = events.rate {
            let due = Duration::from_secs_f64((i + 1) as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                producer.poll(Duration::ZERO);
                std::thread::sleep(wait);
            }
        }
        if (i + 1) % 10_000 == 0 {
            producer.poll(Duration::ZERO);
            progress(i + 1);
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| kafka_err(format!("flushing to {topic}: {e}")))?;
    progress(events.count);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_reproducible_json() {
        let a = Order::new(42, 1000);
        assert_eq!(a, Order::new(42, 1000));
        let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(json["order_id"], "o-42");
        assert_eq!(json["product_id"].as_i64().unwrap(), a.product_id);
        let cents = (json["amount"].as_f64().unwrap() * 100.0).round() as i64;
        assert_eq!(cents, a.amount_cents);
        assert!((1..=PRODUCTS as i64).contains(&a.product_id));
    }
}
