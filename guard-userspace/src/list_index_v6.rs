//! The IPv6 lists' index (layout: guard-common's `list_index`): one hash entry per prefix,
//! kept beside the trie entry, and each list's table of distinct prefix lengths, written into
//! the generation not in use and switched by the same `Settings::index` write as the IPv4
//! index.
//!
//! A list is indexed while the map holds exactly its prefixes. That holds from the moment it
//! is indexed (all its prefixes written, any others of that list removed) as long as every
//! change of the list passes here with its trie; when it cannot hold (too many distinct
//! lengths, the map full), the list goes back to its trie and its entries are left as they
//! are, to be set right when it is indexed again.

use std::{borrow::BorrowMut, collections::BTreeSet};

use aya::maps::{Array, HashMap, MapData, MapError};
use guard_common::{
    V6_INDEX_LENGTHS, V6IndexKey, V6Lengths, index_active_bit, index_area, index_generation_bit,
    maps as names, v6_list, v6_words,
};

use crate::policy::Prefixes;

/// Why an IPv6 list is left to its trie.
#[derive(Debug, thiserror::Error)]
pub enum V6IndexFull {
    #[error("it has {0} distinct prefix lengths, the index takes {V6_INDEX_LENGTHS}")]
    Lengths(usize),
    #[error("map MG_V6_INDEX: {0}")]
    Map(#[source] MapError),
}

/// The length table of a list: its distinct prefix lengths, longest first.
pub fn lengths_of(prefixes: &Prefixes<[u8; 16]>) -> Result<V6Lengths, V6IndexFull> {
    let distinct: BTreeSet<u32> = prefixes.keys().map(|&(len, _)| len.min(128)).collect();
    if distinct.len() > V6_INDEX_LENGTHS {
        return Err(V6IndexFull::Lengths(distinct.len()));
    }
    Ok(V6Lengths::of(distinct.into_iter().rev()))
}

/// The index key of one prefix of `list`.
pub fn key_of(list: u32, &(len, addr): &(u32, [u8; 16])) -> V6IndexKey {
    V6IndexKey::new(list, len.min(128) as u8, &v6_words(&addr))
}

/// The index maps of a loaded or pinned program.
pub struct V6IndexMaps<T> {
    pub entries: HashMap<T, V6IndexKey, u8>,
    pub lengths: Array<T, V6Lengths>,
}

/// What happens to one list's IPv6 index in one update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Step {
    /// Indexed before and after: the new prefixes are added now, the old ones removed after
    /// the switch.
    Keep,
    /// Indexed from now on: the map is made to hold exactly the new prefixes.
    Start,
    /// Not indexed after this update (or before and after).
    Trie,
}

impl<T: BorrowMut<MapData>> V6IndexMaps<T> {
    /// Before the switch: brings the map's entries of `list` to hold every prefix of `new`
    /// (`was_indexed`: whether it is indexed now, so holds exactly `old`), and writes its
    /// length table into the generation not in use per `in_force`. Returns the list's bits of
    /// the next `Settings::index` (none: left to the trie, with a warning naming `name`).
    pub fn prepare(
        &mut self,
        list: u32,
        name: &str,
        in_force: u32,
        old: &Prefixes<[u8; 16]>,
        new: &Prefixes<[u8; 16]>,
    ) -> u32 {
        let bits = v6_list(list);
        let was_indexed = in_force & index_active_bit(bits) != 0;
        match self.try_prepare(list, was_indexed, old, new) {
            Ok(table) => {
                let generation = u32::from(in_force & index_generation_bit(bits) == 0);
                if let Err(e) = self.lengths.set(index_area(list, generation), table, 0) {
                    log::warn!(
                        "list {name}: IPv6 lookups use the trie, not the index: map {}: {e}",
                        names::V6_LENGTHS
                    );
                    return 0;
                }
                index_active_bit(bits)
                    | if generation == 1 {
                        index_generation_bit(bits)
                    } else {
                        0
                    }
            }
            Err(e) => {
                log::warn!("list {name}: IPv6 lookups use the trie, not the index: {e}");
                0
            }
        }
    }

    fn try_prepare(
        &mut self,
        list: u32,
        was_indexed: bool,
        old: &Prefixes<[u8; 16]>,
        new: &Prefixes<[u8; 16]>,
    ) -> Result<V6Lengths, V6IndexFull> {
        let table = lengths_of(new)?;
        if !was_indexed {
            // Entries left from an earlier time the list was indexed, not in this version.
            let wanted: BTreeSet<V6IndexKey> = new.keys().map(|p| key_of(list, p)).collect();
            let stale: Vec<V6IndexKey> = self
                .entries
                .keys()
                .filter_map(Result::ok)
                .filter(|k| u32::from(k.list) == list && !wanted.contains(k))
                .collect();
            for k in stale {
                self.entries.remove(&k).map_err(V6IndexFull::Map)?;
            }
        }
        for p in new.keys().filter(|p| !was_indexed || !old.contains_key(p)) {
            self.entries
                .insert(key_of(list, p), 1, 0)
                .map_err(V6IndexFull::Map)?;
        }
        Ok(table)
    }

    /// After the switch: removes the prefixes of `old` that `new` does not hold, for a list
    /// indexed before and after (`still_indexed`), or all of `old`'s for a list indexed before
    /// and not after, to free their room (`was_indexed`).
    pub fn retire(
        &mut self,
        list: u32,
        was_indexed: bool,
        still_indexed: bool,
        old: &Prefixes<[u8; 16]>,
        new: &Prefixes<[u8; 16]>,
    ) {
        if !was_indexed {
            return;
        }
        for p in old
            .keys()
            .filter(|p| !still_indexed || !new.contains_key(p))
        {
            // A missing entry is what removal wants; anything else leaves one entry too many,
            // which a later re-indexing removes.
            let _ = self.entries.remove(&key_of(list, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guard_common::v6_index_contains;

    fn prefixes(list: &[(u32, &str)]) -> Prefixes<[u8; 16]> {
        list.iter()
            .map(|&(len, a)| {
                let a: std::net::Ipv6Addr = a.parse().expect("address");
                ((len, a.octets()), 0)
            })
            .collect()
    }

    /// What an LPM lookup answers: whether any prefix covers the address.
    fn covered(p: &Prefixes<[u8; 16]>, a: u128) -> bool {
        p.keys().any(|&(len, net)| {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            a & mask == u128::from_be_bytes(net) & mask
        })
    }

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn the_index_answers_as_the_prefixes_do() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let base =
            u128::from_be_bytes("2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().octets());
        // Addresses in 2001:db8::/32 with few distinct bits, so that prefixes overlap.
        let addr = |rng: &mut Rng| {
            let r = rng.next() as u128;
            base | ((r & 0xf) << 92)
                | ((r >> 4 & 0xf) << 60)
                | ((r >> 8 & 0xf) << 28)
                | (r >> 12 & 0xf)
        };
        for round in 0..30 {
            // Up to eight lengths per round, among 0..=128 (0 only in odd rounds).
            let lengths: Vec<u32> = (0..8)
                .map(|_| (rng.next() % 129) as u32)
                .map(|l| if round % 2 == 0 { l.max(32) } else { l })
                .collect();
            let p: Prefixes<[u8; 16]> = (0..100)
                .map(|_| {
                    let len = lengths[(rng.next() % 8) as usize];
                    ((len, addr(&mut rng).to_be_bytes()), 0)
                })
                .collect();
            let keys: BTreeSet<V6IndexKey> = p.keys().map(|k| key_of(2, k)).collect();
            let table = lengths_of(&p).expect("at most eight lengths");
            for _ in 0..5000 {
                let a = addr(&mut rng);
                let found =
                    v6_index_contains(2, &table, &v6_words(&a.to_be_bytes()), |k| keys.contains(k));
                assert_eq!(found, covered(&p, a), "round {round}, address {a:x}");
                // Lists do not see each other's entries.
                assert!(!v6_index_contains(
                    1,
                    &table,
                    &v6_words(&a.to_be_bytes()),
                    |k| { keys.contains(k) }
                ));
            }
        }
        // Host bits beyond the length are ignored, as the trie ignores them.
        let loose: Prefixes<[u8; 16]> =
            [((48, (base | 0xffff_0000_0000_0000_0001).to_be_bytes()), 0)].into();
        let keys: BTreeSet<V6IndexKey> = loose.keys().map(|k| key_of(0, k)).collect();
        let t = lengths_of(&loose).unwrap();
        assert!(v6_index_contains(
            0,
            &t,
            &v6_words(&(base | 9).to_be_bytes()),
            |k| keys.contains(k)
        ));
    }

    #[test]
    fn length_tables() {
        let p = prefixes(&[
            (64, "2001:db8::"),
            (48, "2001:db8:1::"),
            (64, "2001:db8:2::"),
        ]);
        let t = lengths_of(&p).unwrap();
        assert_eq!((t.count, &t.lengths[..2]), (2, &[64u8, 48][..]));
        assert_eq!(lengths_of(&Prefixes::new()).unwrap().count, 0);
        let many: Prefixes<[u8; 16]> = (0..=V6_INDEX_LENGTHS as u32)
            .map(|i| {
                (
                    (
                        120 - i,
                        [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                    ),
                    0,
                )
            })
            .collect();
        assert!(matches!(lengths_of(&many), Err(V6IndexFull::Lengths(9))));
    }
}
