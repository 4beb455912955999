//! Iceberg for Sluice: catalogs (`catalog`), table storage listing (`storage`), the sink
//! table and the data-file exchange between executors and driver (`sink`), data-file
//! naming and clean-up (`data_files`), conditional commits (`commit`), compaction's replace
//! snapshots (`rewrite`) and the live data files kept between batches (`live`).

pub mod catalog;
pub mod commit;
pub mod data_files;
pub mod live;
pub mod overview;
pub mod rewrite;
pub mod sink;
pub mod storage;
