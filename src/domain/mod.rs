//! The access workflow's domain core: `decide` over the state folded by
//! the `portcullis-projections` crate. Pure: no clock, no I/O; time and
//! identity come in with the command.

pub mod decide;

pub use portcullis_projections::{events, rbac, state, types};

#[cfg(test)]
mod tests;
