//! `sluice produce`: synthetic order events into a topic.

use std::time::Instant;

use anyhow::{Context, Result};
use sluice_kafka::read::OffsetReader;
use sluice_kafka::synthetic::{produce_orders, producer};

/// Produces `count` events (or until interrupted when absent) at `rate` events/s.
pub fn produce(
    bootstrap_servers: &str,
    topic: &str,
    count: u64,
    rate: Option<f64>,
    first: u64,
    quiet: bool,
) -> Result<()> {
    let partitions = OffsetReader::new(bootstrap_servers)?
        .partitions(&[topic.to_string()])
        .with_context(|| format!("looking up topic {topic}"))?[topic];
    let producer = producer(bootstrap_servers)?;
    let started = Instant::now();
    produce_orders(&producer, topic, partitions, first, count, rate, |sent| {
        if !quiet {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            eprint!(
                "\rproduced {}/{} events to {topic} ({} events/s)   ",
                crate::format::thousands(sent),
                crate::format::thousands(count),
                crate::format::thousands((sent as f64 / secs) as u64)
            );
        }
    })?;
    if !quiet {
        eprintln!();
    }
    Ok(())
}
