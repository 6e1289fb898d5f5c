//! The IPv4 lists expanded into the three-level index XDP reads (layout: guard-common's
//! `list_index`), and its double-buffered writing: the generation not in use is written whole,
//! then `Settings::index` flips to it in one map write.

use aya::maps::Map;
use guard_common::{
    INDEX_CHILD, INDEX_COVERED, INDEX_LISTS, INDEX_NONE, V4_INDEX_BITMAPS, V4_INDEX_BLOCKS,
    index_active_bit, index_area, index_generation_bit, maps as names, v4_index_contains,
    v4_slot_16, v4_slot_24, v4_slot_32,
};

use crate::kernel::mapped::{MappedArray, MappedError};

/// Why a list is left to its trie.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexFull {
    #[error("more than {V4_INDEX_BLOCKS} /16s are partly covered")]
    Blocks,
    #[error("more than {V4_INDEX_BITMAPS} /24s are partly covered")]
    Bitmaps,
}

/// One IPv4 list, expanded: level 16 (65536 entries), the level-24 blocks and the level-32
/// bitmaps it uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Index {
    pub level16: Vec<u32>,
    pub level24: Vec<[u32; 256]>,
    pub level32: Vec<[u64; 4]>,
}

impl V4Index {
    /// Expands prefixes (length, network address); shorter prefixes first, so that a covered
    /// /16 or /24 needs no finer entries under it.
    pub fn build<'a>(
        prefixes: impl IntoIterator<Item = &'a (u32, [u8; 4])>,
    ) -> Result<V4Index, IndexFull> {
        let mut sorted: Vec<(u32, u32)> = prefixes
            .into_iter()
            .map(|&(len, a)| (len.min(32), u32::from_be_bytes(a)))
            .collect();
        sorted.sort_unstable();
        let mut ix = V4Index {
            level16: vec![INDEX_NONE; 65536],
            level24: Vec::new(),
            level32: Vec::new(),
        };
        for (len, addr) in sorted {
            let addr = if len == 0 {
                0
            } else {
                addr & (u32::MAX << (32 - len))
            };
            let i16 = (addr >> 16) as usize;
            if len <= 16 {
                let n = 1usize << (16 - len);
                ix.level16[i16..i16 + n].fill(INDEX_COVERED);
                continue;
            }
            let block = match ix.level16[i16] {
                INDEX_COVERED => continue,
                INDEX_NONE => {
                    if ix.level24.len() == V4_INDEX_BLOCKS as usize {
                        return Err(IndexFull::Blocks);
                    }
                    ix.level24.push([INDEX_NONE; 256]);
                    ix.level16[i16] = INDEX_CHILD + ix.level24.len() as u32 - 1;
                    ix.level24.len() - 1
                }
                child => (child - INDEX_CHILD) as usize,
            };
            let i24 = ((addr >> 8) & 0xff) as usize;
            if len <= 24 {
                let n = 1usize << (24 - len);
                ix.level24[block][i24..i24 + n].fill(INDEX_COVERED);
                continue;
            }
            let bitmap = match ix.level24[block][i24] {
                INDEX_COVERED => continue,
                INDEX_NONE => {
                    if ix.level32.len() == V4_INDEX_BITMAPS as usize {
                        return Err(IndexFull::Bitmaps);
                    }
                    ix.level32.push([0; 4]);
                    ix.level24[block][i24] = INDEX_CHILD + ix.level32.len() as u32 - 1;
                    ix.level32.len() - 1
                }
                child => (child - INDEX_CHILD) as usize,
            };
            let first = (addr & 0xff) as usize;
            for host in first..first + (1usize << (32 - len)) {
                ix.level32[bitmap][host / 64] |= 1 << (host % 64);
            }
        }
        Ok(ix)
    }

    /// Whether the index holds `addr`, by the lookup XDP runs.
    pub fn contains(&self, addr: [u8; 4]) -> bool {
        v4_index_contains(
            0,
            u32::from_be_bytes(addr),
            |i| self.level16.get(i as usize).copied().unwrap_or(0),
            |i| {
                self.level24
                    .get(i as usize / 256)
                    .map_or(0, |b| b[i as usize % 256])
            },
            |i| {
                self.level32
                    .get(i as usize / 4)
                    .map_or(0, |b| b[i as usize % 4])
            },
        )
    }
}

/// The three index maps, mapped writable.
#[derive(Clone)]
pub struct IndexMaps {
    level16: MappedArray<u32>,
    level24: MappedArray<u32>,
    level32: MappedArray<u64>,
}

impl IndexMaps {
    pub fn open(level16: &Map, level24: &Map, level32: &Map) -> Result<IndexMaps, MappedError> {
        Ok(IndexMaps {
            level16: MappedArray::open(level16, names::V4_INDEX_16, true)?,
            level24: MappedArray::open(level24, names::V4_INDEX_24, true)?,
            level32: MappedArray::open(level32, names::V4_INDEX_32, true)?,
        })
    }

    /// Writes the lists (by `INDEX_*` list number; `None`: left to its trie) into the
    /// generations not in use per `index` (the `Settings::index` in force), and returns the
    /// `Settings::index` that switches to them. Until that is written, XDP reads only the
    /// generations in use.
    pub fn write(&mut self, index: u32, lists: &[Option<&V4Index>; INDEX_LISTS as usize]) -> u32 {
        let mut next = 0;
        for (list, ix) in lists.iter().enumerate() {
            let list = list as u32;
            let Some(ix) = ix else { continue };
            let generation = u32::from(index & index_generation_bit(list) == 0);
            let area = index_area(list, generation);
            for (i, &v) in ix.level16.iter().enumerate() {
                self.level16
                    .set(v4_slot_16(area, (i as u32) << 16) as usize, v);
            }
            for (b, block) in ix.level24.iter().enumerate() {
                let first = v4_slot_24(area, b as u32, 0) as usize;
                for (i, &v) in block.iter().enumerate() {
                    self.level24.set(first + i, v);
                }
            }
            for (m, bitmap) in ix.level32.iter().enumerate() {
                let (first, _) = v4_slot_32(area, m as u32, 0);
                for (i, &w) in bitmap.iter().enumerate() {
                    self.level32.set(first as usize + i, w);
                }
            }
            next |= index_active_bit(list);
            if generation == 1 {
                next |= index_generation_bit(list);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_rng::Rng;

    /// What an LPM lookup answers: whether any prefix covers the address.
    fn covered(prefixes: &[(u32, [u8; 4])], addr: [u8; 4]) -> bool {
        let a = u32::from_be_bytes(addr);
        prefixes.iter().any(|&(len, p)| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            a & mask == u32::from_be_bytes(p) & mask
        })
    }

    #[test]
    fn the_index_answers_as_the_prefixes_do() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            // Prefixes of every length, clustered in a few /12s so that they overlap.
            let prefixes: Vec<(u32, [u8; 4])> = (0..200)
                .map(|_| {
                    let len = rng.next_u32() % 33;
                    let addr = (0xc600_0000 | (rng.next_u32() & 0x003f_ffff)).to_be_bytes();
                    (len.max(if round % 2 == 0 { 8 } else { 0 }), addr)
                })
                .collect();
            let ix = V4Index::build(&prefixes).expect("fits");
            for _ in 0..20_000 {
                let addr = (0xc600_0000 | (rng.next_u32() & 0x003f_ffff)).to_be_bytes();
                assert_eq!(
                    ix.contains(addr),
                    covered(&prefixes, addr),
                    "round {round}, address {addr:?}"
                );
            }
            // Edges of each prefix: first and last address in, neighbours as the list says.
            for &(len, p) in &prefixes {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
                let first = u32::from_be_bytes(p) & mask;
                let last = first | !mask;
                for a in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                    assert_eq!(
                        ix.contains(a.to_be_bytes()),
                        covered(&prefixes, a.to_be_bytes())
                    );
                }
            }
        }
    }

    #[test]
    fn empty_and_whole_lists() {
        let empty = V4Index::build(&[]).unwrap();
        assert!(!empty.contains([198, 18, 0, 1]));
        let all = V4Index::build(&[(0, [0, 0, 0, 0])]).unwrap();
        assert!(all.contains([198, 18, 0, 1]) && all.contains([255, 255, 255, 255]));
        assert!(all.level24.is_empty() && all.level32.is_empty());
        // Host bits beyond the length are ignored, as the trie ignores them.
        let loose = V4Index::build(&[(24, [198, 18, 0, 77])]).unwrap();
        assert!(loose.contains([198, 18, 0, 1]) && !loose.contains([198, 18, 1, 1]));
    }

    #[test]
    fn lists_beyond_the_index_are_left_to_the_trie() {
        // One /24 in each of 1025 distinct /16s: one block too many.
        let spread: Vec<(u32, [u8; 4])> = (0..=V4_INDEX_BLOCKS)
            .map(|i| (24, [10 + (i >> 8) as u8, i as u8, 0, 0]))
            .collect();
        assert_eq!(V4Index::build(&spread), Err(IndexFull::Blocks));
        // 1025 /24s in five /16s fit.
        let dense: Vec<(u32, [u8; 4])> = (0..=V4_INDEX_BLOCKS)
            .map(|i| (24, [10, (i >> 8) as u8, i as u8, 0]))
            .collect();
        assert!(V4Index::build(&dense).is_ok());
        let bitmaps: Vec<(u32, [u8; 4])> = (0..=V4_INDEX_BITMAPS)
            .map(|i| (32, [10, (i >> 8) as u8, i as u8, 1]))
            .collect();
        assert_eq!(V4Index::build(&bitmaps), Err(IndexFull::Bitmaps));
    }
}
