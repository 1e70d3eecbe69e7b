//! The C2SP tlog-tiles layout (<https://c2sp.org/tlog-tiles>).
//!
//! Hash tiles `tile/<L>/<N>[.p/<W>]` hold up to 256 consecutive full-node
//! hashes at tree level `8 * L`; entry bundles `tile/entries/<N>[.p/<W>]`
//! hold up to 256 entries, each prefixed with its big-endian uint16 length.

/// Hashes (or entries) in a full tile.
pub const TILE_WIDTH: u64 = 256;
/// Tree levels spanned by one tile.
pub const TILE_HEIGHT: u8 = 8;

/// A tile coordinate: tile level, index within the level, and width (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tile {
    pub level: u8,
    pub index: u64,
    pub width: u64,
}

/// Encodes a tile index as zero-padded 3-digit path elements, all but the last prefixed with `x`.
pub fn index_path(index: u64) -> String {
    let mut groups = vec![index % 1000];
    let mut rest = index / 1000;
    while rest > 0 {
        groups.push(rest % 1000);
        rest /= 1000;
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| if i < last { format!("x{g:03}") } else { format!("{g:03}") })
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses the path elements written by [`index_path`] (strictly).
pub fn parse_index_path(elements: &[&str]) -> Option<u64> {
    let (last, rest) = elements.split_last()?;
    let mut index: u64 = 0;
    for element in rest {
        let digits = element.strip_prefix('x')?;
        index = index.checked_mul(1000)?.checked_add(three_digits(digits)?)?;
    }
    let index = index.checked_mul(1000)?.checked_add(three_digits(last)?)?;
    // Reject non-minimal encodings such as x000/001.
    (index_path(index).split('/').count() == elements.len()).then_some(index)
}

fn three_digits(s: &str) -> Option<u64> {
    (s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

impl Tile {
    /// The path of this hash tile, relative to the log prefix.
    pub fn path(&self) -> String {
        format!("tile/{}/{}{}", self.level, index_path(self.index), self.partial_suffix())
    }

    /// The path of the entry bundle with this tile's index and width (level 0 only).
    pub fn entries_path(&self) -> String {
        format!("tile/entries/{}{}", index_path(self.index), self.partial_suffix())
    }

    fn partial_suffix(&self) -> String {
        if self.width < TILE_WIDTH { format!(".p/{}", self.width) } else { String::new() }
    }

    /// The tree level of the hashes this tile holds.
    pub fn tree_level(&self) -> u8 {
        self.level * TILE_HEIGHT
    }

    /// Every tile (full or partial) of a tree of `size` leaves, level by level.
    pub fn all_for_size(size: u64) -> Vec<Tile> {
        let mut tiles = Vec::new();
        let mut level = 0u8;
        let mut hashes = size;
        while hashes > 0 {
            let full = hashes / TILE_WIDTH;
            for index in 0..full {
                tiles.push(Tile { level, index, width: TILE_WIDTH });
            }
            if !hashes.is_multiple_of(TILE_WIDTH) {
                tiles.push(Tile { level, index: full, width: hashes % TILE_WIDTH });
            }
            hashes /= TILE_WIDTH;
            level += 1;
        }
        tiles
    }

    /// Parses `tile/<L>/<N>[.p/<W>]` or `tile/entries/<N>[.p/<W>]`; returns the
    /// tile and whether it is an entry bundle.
    pub fn parse_path(path: &str) -> Option<(Tile, bool)> {
        let rest = path.strip_prefix("tile/")?;
        let (level_part, rest) = rest.split_once('/')?;
        let (rest, width) = match rest.split_once(".p/") {
            Some((rest, w)) => {
                let width: u64 = w.parse().ok().filter(|w| (1..TILE_WIDTH).contains(w))?;
                (w == width.to_string()).then_some(())?;
                (rest, width)
            }
            None => (rest, TILE_WIDTH),
        };
        let index = parse_index_path(&rest.split('/').collect::<Vec<_>>())?;
        if level_part == "entries" {
            return Some((Tile { level: 0, index, width }, true));
        }
        let level: u8 = level_part.parse().ok().filter(|l| *l <= 63)?;
        (level.to_string() == level_part).then_some(())?;
        Some((Tile { level, index, width }, false))
    }
}

/// Encodes entries as an entry bundle.
///
/// # Panics
/// Never for entries produced by this crate, which are at most
/// [`crate::event::MAX_ENTRY_SIZE`] bytes; a larger entry is a bug in the caller.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let len = u16::try_from(entry.len()).expect("entries are at most 65535 bytes");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    out
}

/// Splits an entry bundle into its entries.
///
/// # Errors
/// [`BundleError`] when a length prefix runs past the end of the bundle.
pub fn decode_bundle(bundle: &[u8]) -> Result<Vec<&[u8]>, BundleError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    while pos < bundle.len() {
        let Some(len_bytes) = bundle.get(pos..pos + 2) else {
            return Err(BundleError::Truncated { entry: entries.len() });
        };
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let Some(entry) = bundle.get(pos + 2..pos + 2 + len) else {
            return Err(BundleError::Truncated { entry: entries.len() });
        };
        entries.push(entry);
        pos += 2 + len;
    }
    Ok(entries)
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    #[error("entry bundle is truncated inside entry {entry}")]
    Truncated { entry: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_spec_examples() {
        assert_eq!(index_path(1_234_067), "x001/x234/067");
        assert_eq!(index_path(0), "000");
        let tile = Tile { level: 1, index: 1_234_067, width: 17 };
        assert_eq!(tile.path(), "tile/1/x001/x234/067.p/17");
        assert_eq!(Tile::parse_path(&tile.path()), Some((tile, false)));
        assert_eq!(Tile::parse_path("tile/entries/000"), Some((Tile { level: 0, index: 0, width: 256 }, true)));
        assert_eq!(Tile::parse_path("tile/0/x000/001"), None);
        assert_eq!(Tile::parse_path("tile/0/000.p/256"), None);
        assert_eq!(Tile::parse_path("tile/01/000"), None);
    }

    #[test]
    fn tree_of_70000_has_the_tiles_the_spec_lists() {
        let tiles = Tile::all_for_size(70_000);
        let count =
            |level: u8, partial: bool| tiles.iter().filter(|t| t.level == level && (t.width < 256) == partial).count();
        assert_eq!((count(0, false), count(0, true)), (273, 1));
        assert_eq!((count(1, false), count(1, true)), (1, 1));
        assert_eq!((count(2, false), count(2, true)), (0, 1));
        assert!(tiles.contains(&Tile { level: 0, index: 273, width: 112 }));
        assert!(tiles.contains(&Tile { level: 1, index: 1, width: 17 }));
    }
}
