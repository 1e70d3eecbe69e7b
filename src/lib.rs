//! Portcullis: just-in-time, approval-gated, time-bound access to Kubernetes
//! Ingress and Gateway API routes, recorded in a verifiable ledger.
//!
//! This crate is the service and the CLI. The ledger format lives in
//! `portcullis-format` (`schemas/`), pure folds in `portcullis-projections`.
//!
//! - [`store`]: event stores (SQLite embedded default).
//! - [`ledger`]: the sequencer, the only writer: sequence, chain, sign, group commit.
//! - [`api`]: the HTTP interface (axum).
//! - [`export`]: tlog-tiles exports.
//! - [`report`]: SOC 2 evidence bundles.
//! - [`serve`]: the service's start and shutdown.
//! - [`config`], [`keyfile`]: the config file and key files.

pub mod api;
pub mod auth;
pub mod client;
pub mod config;
pub mod domain;
pub mod export;
pub mod http;
pub mod keyfile;
pub mod ledger;
pub mod migrate;
pub mod notify;
pub mod oidc;
pub mod policy;
pub mod reconciler;
pub mod report;
pub mod serve;
pub mod store;
pub mod witness;
pub mod workflow;

/// A mutex's guard, also after a panic of another holder: what the crate
/// keeps behind a mutex (a store's connection or cache, the ledger's durable
/// state, a cluster's status, the API's caches) is valid at every step, being
/// replaced or changed whole.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
