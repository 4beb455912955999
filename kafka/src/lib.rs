//! Kafka for Sluice: offset ranges, batch plans and checkpoints (`offsets`), the event-time
//! watermark over partitions, idle ones left out (`watermark`), exact reads of
//! an offset range (`read`) and of a task's ranges with one consumer (`read_together`,
//! taking messages in batches: `fetched`), records to Arrow (`decode`, flat JSON objects through the fast path
//! `flat_json`, bounded by `json_guard`; Avro values through `avro`, with a schema registry), and the
//! synthetic order events of the demo, `sluice produce` and the tests (`synthetic`), and
//! the Nexmark benchmark's events (`nexmark`).

pub mod avro;
pub mod decode;
pub mod fetched;
mod flat_json;
pub mod json_guard;
pub mod nexmark;
pub mod offsets;
pub mod read;
pub mod read_together;
pub mod synthetic;
