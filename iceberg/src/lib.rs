//! Iceberg for Sluice: catalogs (`catalog`), table storage listing (`storage`), the sink
//! table and the data-file exchange between executors and driver (`sink`), data-file
//! naming and clean-up (`data_files`) and conditional commits (`commit`).

pub mod catalog;
pub mod commit;
pub mod data_files;
pub mod overview;
pub mod rewrite;
pub mod sink;
pub mod storage;
