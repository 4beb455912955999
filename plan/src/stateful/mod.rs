//! Stateful operators in the plan, in one home: deduplication's view, lookup and
//! first-row operator (`dedup`, `first_row`), session windows' view and lookup
//! (`session`), state looked up by key one file at a time (`keyed_files`), and the stages
//! that keep state after a shuffle (`shuffle_state`).
//!
//! [`StatefulOperator`] is the one description of what a job's state is: its kind and
//! the rule by which a row stays state. The executor keeps and reads state by it
//! (`executor/src/state/`). A new operator (join sides, a key index) is a variant here,
//! its view or operator in a file beside these, and its rule in the executor's
//! `state::rule`. See docs/architecture.md, "State".

pub(crate) mod dedup;
pub(crate) mod first_row;
pub(crate) mod keyed_files;
mod operator;
pub(crate) mod session;
pub(crate) mod shuffle_state;

pub use dedup::DedupLookup;
pub use first_row::{FirstRowPerKeyExec, OrderColumn};
pub use keyed_files::{KeyedFiles, RowsInMemory};
pub use operator::StatefulOperator;
pub use session::SessionLookup;
pub use shuffle_state::{ShuffleStateKind, ShuffleStateStage};
