//! Pure folds over ledger events: `evolve(state, &event) -> state`, no I/O,
//! no clock. Every projection can be rebuilt from entry 0 and gives the same
//! result as incremental application (each has a property test saying so).
//!
//! - [`types`]: the workflow's value types, parsed once at the edge.
//! - [`events`]: the workflow's event kinds and their data (version 1).
//! - [`state`]: requests, grants and extensions; pending requests, active and
//!   ended grants, per-user history and access at a point in time are queries
//!   on it.
//! - [`intern`]: the values many records share (people, targets, rules), kept once.
//! - [`rbac`]: the effective RBAC rules of a grant.
//! - [`cluster`]: what the reconciler observed in the clusters, and its fold.
//! - [`ledger_stats`]: the ledger's own bookkeeping (keys, kinds).
//! - [`report`]: SOC 2 evidence reports: populations, controls, figures, the bundle's files.

pub mod cluster;
pub mod events;
pub mod intern;
pub mod ledger_stats;
pub mod rbac;
pub mod report;
pub mod state;
pub mod types;

pub use ledger_stats::LedgerStats;
