//! Data generators: the synthetic order events of the demo, `sluice produce` and the tests
//! (`synthetic`, with the producer loop every generator shares), and the Nexmark
//! benchmark's events (`nexmark`). Used by the CLI, tests and the bench, never by the
//! engine.

pub mod nexmark;
pub mod synthetic;
