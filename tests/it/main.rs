//! The one integration-test binary of the workspace (one link, one build).
//! Each area is a module.

mod support;

mod api;
mod cli;
mod crash;
mod edges;
mod format_vectors;
mod ledger;
mod oidc;
mod python_verifier;
mod rfc9162_vectors;
mod tamper;
mod workflow;
