//! The RFC 9162 Merkle tree (section 2.1) over ledger entries.
//!
//! Leaves are hashed `SHA-256(0x00 || entry)` and interior nodes
//! `SHA-256(0x01 || left || right)`, so a leaf can never be taken for a node.
//! Proof generation reads *full* nodes (roots of perfect subtrees, addressed
//! by level and index) through [`HashReader`]; every hash a proof needs is
//! either a full node or built from O(log n) of them, so proofs cost O(log n)
//! reads. Verification follows RFC 9162 sections 2.1.3.2 and 2.1.4.2 exactly.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41,
    0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(entry);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The Merkle tree hash of a list of leaf hashes, computed directly (O(n)).
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut frontier = Frontier::default();
    for leaf in leaves {
        frontier.push(*leaf, |_, _, _| {});
    }
    frontier.root()
}

/// The right edge of a growing tree: the roots of the perfect subtrees that
/// make up a tree of `size` leaves, largest first. Enough to append and to
/// compute the root in O(log n) memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `(level, hash)` of each perfect subtree, levels strictly decreasing.
    nodes: Vec<(u8, Hash)>,
}

impl Frontier {
    /// Rebuilds the frontier of a tree of `size` leaves from its full nodes.
    ///
    /// # Errors
    /// Whatever the reader fails with.
    pub fn load<R: HashReader>(size: u64, reader: &R) -> Result<Self, R::Error> {
        let nodes = Self::edge(size)
            .into_iter()
            .map(|(level, index)| Ok((level, reader.node(level, index)?)))
            .collect::<Result<_, _>>()?;
        Ok(Frontier { size, nodes })
    }

    /// The full nodes, as `(level, index)`, that the frontier of a tree of
    /// `size` leaves is made of, largest first: one per set bit of `size`.
    pub fn edge(size: u64) -> Vec<(u8, u64)> {
        let mut edge = Vec::new();
        let mut start = 0u64;
        for level in (0..64u8).rev() {
            if size & (1 << level) != 0 {
                edge.push((level, start >> level));
                start += 1 << level;
            }
        }
        edge
    }

    /// The frontier of a tree of `size` leaves from the hashes of
    /// [`Frontier::edge`]`(size)`, in its order; `None` when their number is not the edge's.
    pub fn from_edge(size: u64, hashes: Vec<Hash>) -> Option<Self> {
        let edge = Self::edge(size);
        (edge.len() == hashes.len())
            .then(|| Frontier { size, nodes: edge.into_iter().map(|(level, _)| level).zip(hashes).collect() })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf. `completed(level, index, hash)` is called for every full
    /// node the append completes, the leaf itself first (level 0).
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, &Hash)) {
        let index = self.size;
        completed(0, index, &leaf);
        let mut level = 0u8;
        let mut hash = leaf;
        while let Some(&(top_level, top_hash)) = self.nodes.last() {
            if top_level != level {
                break;
            }
            self.nodes.pop();
            hash = node_hash(&top_hash, &hash);
            level += 1;
            completed(level, index >> level, &hash);
        }
        self.nodes.push((level, hash));
        self.size += 1;
    }

    /// The root hash of the tree so far.
    pub fn root(&self) -> Hash {
        let mut iter = self.nodes.iter().rev();
        let Some(&(_, mut hash)) = iter.next() else {
            return EMPTY_ROOT;
        };
        for (_, left) in iter {
            hash = node_hash(left, &hash);
        }
        hash
    }
}

/// Reads full nodes: the hash of the perfect subtree at `level` covering
/// leaves `index << level .. (index + 1) << level`. Level 0 is the leaf hashes.
pub trait HashReader {
    type Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

impl HashReader for [Hash] {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        let start = (index << level) as usize;
        Ok(root_of(&self[start..start + (1usize << level)]))
    }
}

impl HashReader for Vec<Hash> {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        self.as_slice().node(level, index)
    }
}

/// The largest power of two strictly less than `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of leaves `start..end` (non-empty), reading the
/// perfect subtrees it decomposes into.
///
/// # Errors
/// Whatever the reader fails with.
pub fn range_hash<R: HashReader + ?Sized>(reader: &R, start: u64, end: u64) -> Result<Hash, R::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return reader.node(n.trailing_zeros() as u8, start / n);
    }
    let k = split_point(n);
    Ok(node_hash(&range_hash(reader, start, start + k)?, &range_hash(reader, start + k, end)?))
}

/// Errors of proof generation.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProveError<E> {
    #[error("index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("sizes {old} and {new} do not allow a consistency proof (need 0 < old <= new)")]
    BadSizes { old: u64, new: u64 },
    #[error("reading the tree: {0}")]
    Read(E),
}

/// The RFC 9162 inclusion proof (audit path) of leaf `index` in the tree of `size` leaves.
///
/// # Errors
/// [`ProveError::IndexOutOfRange`] or a read failure.
pub fn inclusion_proof<R: HashReader + ?Sized>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProveError<R::Error>> {
    if index >= size {
        return Err(ProveError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    path(reader, index, 0, size, &mut proof).map_err(ProveError::Read)?;
    Ok(proof)
}

fn path<R: HashReader + ?Sized>(
    reader: &R,
    m: u64,
    start: u64,
    end: u64,
    proof: &mut Vec<Hash>,
) -> Result<(), R::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(reader, m, start, start + k, proof)?;
        proof.push(range_hash(reader, start + k, end)?);
    } else {
        path(reader, m - k, start + k, end, proof)?;
        proof.push(range_hash(reader, start, start + k)?);
    }
    Ok(())
}

/// The RFC 9162 consistency proof from the tree of `old` leaves to the tree of `new` leaves.
///
/// # Errors
/// [`ProveError::BadSizes`] unless `0 < old <= new`, or a read failure.
pub fn consistency_proof<R: HashReader + ?Sized>(
    reader: &R,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProveError<R::Error>> {
    if old == 0 || old > new {
        return Err(ProveError::BadSizes { old, new });
    }
    let mut proof = Vec::new();
    subproof(reader, old, 0, new, true, &mut proof).map_err(ProveError::Read)?;
    Ok(proof)
}

fn subproof<R: HashReader + ?Sized>(
    reader: &R,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    proof: &mut Vec<Hash>,
) -> Result<(), R::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            proof.push(range_hash(reader, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(reader, m, start, start + k, whole, proof)?;
        proof.push(range_hash(reader, start + k, end)?);
    } else {
        subproof(reader, m - k, start + k, end, false, proof)?;
        proof.push(range_hash(reader, start, start + k)?);
    }
    Ok(())
}

/// Why a proof does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is not in a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    #[error("the proof leads to a different root")]
    RootMismatch,
    #[error("old size {old} is larger than new size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("a consistency proof from the empty tree proves nothing and is refused")]
    FromEmptyTree,
    #[error("equal sizes need an empty proof and equal roots")]
    EqualSizesMismatch,
}

/// Verifies an inclusion proof (RFC 9162 section 2.1.3.2).
///
/// # Errors
/// [`ProofError`] when the proof is malformed or does not lead to `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &[u8]) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if r.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Verifies a consistency proof (RFC 9162 section 2.1.4.2). Sizes may be
/// equal (with an empty proof and equal roots); a proof from the empty tree is
/// refused, as it proves nothing.
///
/// # Errors
/// [`ProofError`] when the proof is malformed or inconsistent with the roots.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &[u8],
    new_root: &[u8],
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old > new {
        return Err(ProofError::SizesReversed { old, new });
    }
    if old == new {
        let empty_ok = old != 0 || old_root == EMPTY_ROOT;
        if !proof.is_empty() || old_root != new_root || !empty_ok {
            return Err(ProofError::EqualSizesMismatch);
        }
        return Ok(());
    }
    if old == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let (Ok(old_root), Ok(new_root)) = (<Hash>::try_from(old_root), <Hash>::try_from(new_root)) else {
        return Err(ProofError::RootMismatch);
    };
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(old_root);
    }
    path.extend_from_slice(proof);
    let mut f_n = old - 1;
    let mut s_n = new - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let mut f_r = path[0];
    let mut s_r = path[0];
    for c in &path[1..] {
        if s_n == 0 {
            return Err(ProofError::WrongLength);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(ProofError::WrongLength);
    }
    if f_r != old_root || s_r != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn generated_proofs_verify_for_every_index_and_size_up_to_40() {
        let all = leaves(40);
        for size in 1..=40u64 {
            let tree = &all[..size as usize];
            let root = root_of(tree);
            for index in 0..size {
                let proof = inclusion_proof(tree, index, size).unwrap();
                verify_inclusion(index, size, &tree[index as usize], &proof, &root).unwrap();
            }
            for old in 1..=size {
                let proof = consistency_proof(tree, old, size).unwrap();
                let old_root = root_of(&tree[..old as usize]);
                verify_consistency(old, size, &old_root, &root, &proof).unwrap();
            }
        }
    }

    #[test]
    fn frontier_reports_every_full_node_and_reloads() {
        let all = leaves(37);
        let mut frontier = Frontier::default();
        let mut nodes = std::collections::HashMap::new();
        for leaf in &all {
            frontier.push(*leaf, |level, index, hash| {
                nodes.insert((level, index), *hash);
            });
        }
        assert_eq!(frontier.root(), root_of(&all));
        for (&(level, index), hash) in &nodes {
            assert_eq!(*hash, all.node(level, index).unwrap());
        }
        let reloaded = Frontier::load(37, &all).unwrap();
        assert_eq!(reloaded, frontier);
        // 37 = 32 + 4 + 1: the subtrees of leaves 0-31, 32-35 and 36.
        assert_eq!(Frontier::edge(37), [(5, 0), (2, 8), (0, 36)]);
        let hashes: Vec<Hash> = Frontier::edge(37).iter().map(|&(l, i)| nodes[&(l, i)]).collect();
        assert_eq!(Frontier::from_edge(37, hashes.clone()), Some(frontier));
        assert_eq!(Frontier::from_edge(37, hashes[1..].to_vec()), None);
    }

    #[test]
    fn a_node_hash_cannot_pass_as_a_leaf() {
        // Leaf/node confusion: the root of a two-leaf tree offered as the
        // "entry" of a one-leaf tree hashes differently, thanks to the prefixes.
        let two = leaves(2);
        let node = node_hash(&two[0], &two[1]);
        let mut forged = vec![0x01];
        forged.extend_from_slice(&two[0]);
        forged.extend_from_slice(&two[1]);
        assert_ne!(leaf_hash(&forged[1..]), node);
        assert!(verify_inclusion(0, 1, &leaf_hash(&forged[1..]), &[], &node).is_err());
    }
}
