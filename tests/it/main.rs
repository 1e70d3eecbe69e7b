//! The one integration-test binary of the workspace (one link, one build).
//! Each area is a module.

mod support;

mod format_vectors;
mod rfc9162_vectors;
mod tamper;
