//! The cluster reconciler: makes each active grant real as a Role and a
//! RoleBinding in its cluster, and takes them away on time.

pub mod config;
pub mod desired;
