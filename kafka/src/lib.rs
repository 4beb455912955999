//! Kafka for Sluice: offset ranges cut, split and packed into tasks (`offsets`); reading
//! (`read`: consumers and their connections, the driver's offset lookups, the executor's
//! exact range reads, a task's ranges read together by one consumer, messages taken in
//! batches); records to Arrow (`decode`: the record types, the decoder, flat JSON objects
//! through a fast path, bounded nesting, Avro values with a schema registry). The data
//! generators of the demo, tests and bench are the `sluice-datagen` crate.

pub mod decode;
pub mod offsets;
pub mod read;
