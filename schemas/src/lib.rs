//! The Portcullis ledger format: the published contract that an auditor's
//! verifier implements. `schemas/FORMAT.md` is the normative text; this crate
//! is its reference implementation and depends on no server crate (no tokio,
//! axum, kube or SQL driver).
//!
//! - [`json`]: strict JSON and RFC 8785 canonical form (integers only).
//! - [`note`]: C2SP signed notes and Ed25519 keys (<https://c2sp.org/signed-note>).
//! - [`event`]: events as signed notes, the entries of the ledger.
//! - [`merkle`]: the RFC 9162 tree, inclusion and consistency proofs.
//! - [`checkpoint`]: C2SP checkpoints (<https://c2sp.org/tlog-checkpoint>).
//! - [`tiles`]: the C2SP tlog-tiles layout (<https://c2sp.org/tlog-tiles>).
//! - [`proof_file`]: C2SP tlog-proof evidence files (<https://c2sp.org/tlog-proof>).
//! - [`keys`]: pinned keys and their ranges, key rotation.
//! - [`export`]: writing an export; [`verify`]: verifying one.
//!
//! ```
//! use portcullis_format::merkle::{leaf_hash, root_of, inclusion_proof, verify_inclusion};
//! let leaves: Vec<_> = (0u8..5).map(|i| leaf_hash(&[i])).collect();
//! let root = root_of(&leaves);
//! let proof = inclusion_proof(leaves.as_slice(), 3, 5).unwrap();
//! assert!(verify_inclusion(3, 5, &leaves[3], &proof, &root).is_ok());
//! ```

pub mod checkpoint;
pub mod event;
pub mod export;
pub mod json;
pub mod keys;
pub mod merkle;
pub mod note;
pub mod proof_file;
pub mod tiles;
pub mod time;
pub mod verify;
pub mod witness;
