//! Kafka for Sluice: offset ranges, batch plans and checkpoints (`offsets`), exact reads of
//! an offset range (`read`), records to Arrow (`decode`, bounded by `json_guard`), and the
//! synthetic order events of the demo, `sluice produce` and the tests (`synthetic`).

pub mod decode;
pub mod json_guard;
pub mod offsets;
pub mod read;
pub mod synthetic;
