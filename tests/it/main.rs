//! The one integration-test binary of the workspace (one link, one build).
//! Each area is a module.

mod support;

mod api;
mod cli;
mod crash;
mod deploy;
mod edges;
mod format_vectors;
mod kube_api;
mod kube_api_tests;
mod ledger;
mod oidc;
mod postgres;
mod python_verifier;
mod reconciler;
mod report;
mod rfc9162_vectors;
mod store_contract;
mod tamper;
mod tls;
mod witness;
mod workflow;
