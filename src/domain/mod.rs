//! The access workflow's domain core: value types, commands, events, state,
//! `decide` and `evolve`. Pure: no clock, no I/O; time and identity come in
//! with the command.

pub mod decide;
pub mod events;
pub mod rbac;
pub mod state;
pub mod types;

#[cfg(test)]
mod tests;
