//! State between batches, in one home: which rows a stateful operator keeps and which
//! records are late (`rule`), the files state is kept in (`files`) and the cache of their
//! rows (`cache`), state kept after the shuffle as a log of files per shuffle partition
//! (`deltas`, `stage`), sessions' open rows (`sessions`), and late records for the
//! dead-letter table (`late_records`).
//!
//! A stateful operator is described once, by `sluice_plan::stateful::StatefulOperator`;
//! the next one (join sides, a key index) gets its rows' lifetime in `rule`, its file
//! deltas in `deltas` and, when kept after the shuffle, its lookup in `stage`. See
//! docs/architecture.md, "State".

pub(crate) mod cache;
pub(crate) mod deltas;
pub(crate) mod files;
pub(crate) mod late_records;
pub(crate) mod rule;
pub(crate) mod sessions;
pub(crate) mod stage;
