//! `sluice produce`: synthetic order events, or the Nexmark benchmark's events, into a
//! topic.

use std::time::Instant;

use anyhow::{Context, Result};
use sluice_datagen::synthetic::{produce_events, producer, EventRange, Order};
use sluice_kafka::read::OffsetReader;

/// Which events `sluice produce` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Events {
    /// JSON orders (the demo's and the examples' schema), keyed by customer.
    Orders,
    /// Nexmark persons, auctions and bids (`sluice_datagen::nexmark::SCHEMA_YAML`).
    Nexmark,
}

/// Produces `count` events at `rate` events/s (as fast as possible when absent).
pub fn produce(
    bootstrap_servers: &str,
    topic: &str,
    events: Events,
    range: EventRange,
    quiet: bool,
) -> Result<()> {
    let count = range.count;
    let partitions = OffsetReader::new(bootstrap_servers)?
        .partitions(&[topic.to_string()])
        .with_context(|| format!("looking up topic {topic}"))?[topic];
    let producer = producer(bootstrap_servers)?;
    let started = Instant::now();
    let event = |seq: u64, now_ms: i64| match events {
        Events::Orders => {
            let order = Order::new(seq, now_ms);
            (Some(order.customer_id.to_string()), order.to_json())
        }
        Events::Nexmark => (None, sluice_datagen::nexmark::event_json(seq, now_ms)),
    };
    let progress = |sent: u64| {
        if !quiet {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\rproduced {}/{} events to {topic} ({} events/s)   ",
                crate::format::thousands(sent),
                crate::format::thousands(count),
                crate::format::thousands((sent as f64 / secs) as u64)
            );
        }
    };
    produce_events(&producer, topic, partitions, range, progress, event)?;
    if !quiet {
        eprintln!();
    }
    Ok(())
}
