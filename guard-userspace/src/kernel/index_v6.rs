//! The IPv6 lists' index (layout: guard-common's `list_index`): the prefix table, a bucketed
//! cuckoo hash of every indexed list's prefixes written through mmap, kept beside the tries;
//! and each list's table of distinct prefix lengths, written into the generation not in use
//! and switched by the same `Settings::index` write as the IPv4 index.
//!
//! A list is indexed while the table holds exactly its prefixes. That holds from the moment it
//! is indexed (all its prefixes written, any others of that list removed) as long as every
//! change of the list passes here with its trie; when it cannot hold (too many distinct
//! lengths, the table full), the list goes back to its trie, to be set right when it is
//! indexed again.

use std::{
    borrow::BorrowMut,
    collections::{BTreeSet, VecDeque},
    sync::atomic::{Ordering, fence},
};

use aya::maps::{Array, MapData};
use guard_common::{
    V6_BUCKET_SLOTS, V6_FINGERPRINT, V6_INDEX_LENGTHS, V6_SLOT_USED, V6Bucket, V6Lengths, V6Slot,
    index_active_bit, index_area, index_generation_bit, maps as names, v6_buckets, v6_hash,
    v6_list, v6_mask, v6_masked, v6_slot_tag, v6_tag, v6_words,
};

use crate::{kernel::mapped::MappedArray, kernel::policy::Prefixes};

/// Why an IPv6 list is left to its trie.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V6IndexFull {
    #[error("it has {0} distinct prefix lengths, the index takes {V6_INDEX_LENGTHS}")]
    Lengths(usize),
    #[error("the index table ({0} slots for all lists) is full; raise `lists.ipv6_index_capacity`")]
    Table(usize),
}

/// The distinct prefix lengths of a list, longest first.
pub fn lengths_of(prefixes: &Prefixes<[u8; 16]>) -> Result<Vec<u32>, V6IndexFull> {
    let distinct: BTreeSet<u32> = prefixes.keys().map(|&(len, _)| len.min(128)).collect();
    if distinct.len() > V6_INDEX_LENGTHS {
        return Err(V6IndexFull::Lengths(distinct.len()));
    }
    Ok(distinct.into_iter().rev().collect())
}

/// One prefix of `list` as the table holds it: its tag and masked address.
pub fn slot_of(list: u32, &(len, addr): &(u32, [u8; 16])) -> V6Slot {
    let len = len.min(128);
    let addr = v6_masked(&v6_words(&addr), &v6_mask(len));
    let tag = v6_tag(list, len);
    V6Slot {
        tag: v6_slot_tag(tag, v6_hash(tag, &addr)),
        addr,
    }
}

/// Where the buckets live: the mapped array XDP reads, or memory (tests).
pub trait BucketStore {
    fn buckets(&self) -> u32;
    fn slot(&self, bucket: u32, i: usize) -> V6Slot;
    /// Fills a free slot: the address first, then the tag, so that XDP never matches a slot
    /// whose address is still being written.
    fn fill(&mut self, bucket: u32, i: usize, slot: V6Slot);
    fn clear(&mut self, bucket: u32, i: usize);
}

impl BucketStore for MappedArray<V6Bucket> {
    fn buckets(&self) -> u32 {
        self.len() as u32
    }

    fn slot(&self, bucket: u32, i: usize) -> V6Slot {
        self.get(bucket as usize).slots[i]
    }

    fn fill(&mut self, bucket: u32, i: usize, slot: V6Slot) {
        let b = self.element_ptr(bucket as usize);
        // SAFETY: `b` is a whole element of the writable mapping; the fields are written in
        // place, volatile (XDP reads them), in the order the fence keeps.
        unsafe {
            let s = &raw mut (*b).slots[i];
            (&raw mut (*s).addr).write_volatile(slot.addr);
            fence(Ordering::Release);
            (&raw mut (*s).tag).write_volatile(slot.tag);
        }
    }

    fn clear(&mut self, bucket: u32, i: usize) {
        let b = self.element_ptr(bucket as usize);
        // SAFETY: as `fill`.
        unsafe { (&raw mut (*b).slots[i].tag).write_volatile(0) };
        fence(Ordering::Release);
    }
}

impl BucketStore for Vec<V6Bucket> {
    fn buckets(&self) -> u32 {
        self.len() as u32
    }

    fn slot(&self, bucket: u32, i: usize) -> V6Slot {
        self[bucket as usize].slots[i]
    }

    fn fill(&mut self, bucket: u32, i: usize, slot: V6Slot) {
        self[bucket as usize].slots[i] = slot;
    }

    fn clear(&mut self, bucket: u32, i: usize) {
        self[bucket as usize].slots[i].tag = 0;
    }
}

/// Buckets searched for a chain of moves that frees a slot for a new prefix.
const CUCKOO_SEARCH: usize = 4096;

/// The prefix table's operations over a store.
pub struct PrefixTable<S: BucketStore>(pub S);

impl<S: BucketStore> PrefixTable<S> {
    fn candidates(&self, slot: &V6Slot) -> [u32; 2] {
        // The hash is of the tag without its fingerprint.
        let hash = v6_hash(slot.tag & !V6_FINGERPRINT, &slot.addr);
        let (a, b) = v6_buckets(hash, self.0.buckets());
        [a, b]
    }

    /// The bucket and slot holding `slot`'s prefix.
    pub fn find(&self, slot: &V6Slot) -> Option<(u32, usize)> {
        self.candidates(slot).into_iter().find_map(|b| {
            (0..V6_BUCKET_SLOTS)
                .find(|&i| self.0.slot(b, i) == *slot)
                .map(|i| (b, i))
        })
    }

    fn free_in(&self, bucket: u32) -> Option<usize> {
        (0..V6_BUCKET_SLOTS).find(|&i| self.0.slot(bucket, i).tag & V6_SLOT_USED == 0)
    }

    /// Adds a prefix (nothing to do when it is there). When both its buckets are full, other
    /// prefixes move to their other bucket to make room, each written there before it is
    /// cleared where it was: XDP finds every prefix at every moment.
    pub fn insert(&mut self, slot: V6Slot) -> Result<(), V6IndexFull> {
        if self.find(&slot).is_some() {
            return Ok(());
        }
        let start = self.candidates(&slot);
        for b in start {
            if let Some(i) = self.free_in(b) {
                self.0.fill(b, i, slot);
                return Ok(());
            }
        }
        // Breadth-first over buckets: each step moves the prefix in (bucket, slot) to its
        // other bucket. `from[k]`: the step that reached bucket `seen[k]`.
        let mut seen: Vec<u32> = start.to_vec();
        let mut from: Vec<Option<(usize, usize)>> = vec![None, None];
        let mut queue: VecDeque<usize> = VecDeque::from([0, 1]);
        while let Some(k) = queue.pop_front() {
            let bucket = seen[k];
            for i in 0..V6_BUCKET_SLOTS {
                let resident = self.0.slot(bucket, i);
                let [a, b] = self.candidates(&resident);
                let other = if a == bucket { b } else { a };
                if other == bucket || seen.contains(&other) {
                    continue;
                }
                seen.push(other);
                from.push(Some((k, i)));
                if let Some(free) = self.free_in(other) {
                    let (bucket, i) = self.shift(&seen, &from, seen.len() - 1, free);
                    self.0.fill(bucket, i, slot);
                    return Ok(());
                }
                if seen.len() >= CUCKOO_SEARCH {
                    return Err(V6IndexFull::Table(
                        self.0.buckets() as usize * V6_BUCKET_SLOTS,
                    ));
                }
                queue.push_back(seen.len() - 1);
            }
        }
        Err(V6IndexFull::Table(
            self.0.buckets() as usize * V6_BUCKET_SLOTS,
        ))
    }

    /// Carries out the moves that end in bucket `seen[k]`, whose slot `free` is free: from the
    /// last move back to the first, each prefix copied into the slot the previous move freed,
    /// then cleared where it was. Returns the slot freed in the new prefix's bucket.
    fn shift(
        &mut self,
        seen: &[u32],
        from: &[Option<(usize, usize)>],
        mut k: usize,
        mut free: usize,
    ) -> (u32, usize) {
        while let Some((parent, i)) = from[k] {
            let src = seen[parent];
            let moving = self.0.slot(src, i);
            self.0.fill(seen[k], free, moving);
            self.0.clear(src, i);
            k = parent;
            free = i;
        }
        (seen[k], free)
    }

    /// Removes a prefix (nothing to do when it is not there).
    pub fn remove(&mut self, slot: &V6Slot) {
        if let Some((b, i)) = self.find(slot) {
            self.0.clear(b, i);
        }
    }

    /// Removes every prefix of `list` that `keep` does not hold.
    pub fn retain_list(&mut self, list: u32, keep: &BTreeSet<([u32; 4], u32)>) {
        for b in 0..self.0.buckets() {
            for i in 0..V6_BUCKET_SLOTS {
                let s = self.0.slot(b, i);
                if s.tag & V6_SLOT_USED != 0
                    && (s.tag >> 8) & 0xff == list
                    && !keep.contains(&(s.addr, s.tag))
                {
                    self.0.clear(b, i);
                }
            }
        }
    }
}

/// The index maps of a loaded or pinned program.
pub struct V6IndexMaps<T> {
    pub table: PrefixTable<MappedArray<V6Bucket>>,
    pub lengths: Array<T, V6Lengths>,
}

impl<T: BorrowMut<MapData>> V6IndexMaps<T> {
    /// Before the switch: brings the table's prefixes of `list` to hold every prefix of `new`
    /// (`in_force`: the `Settings::index` now; when the list is indexed there, the table holds
    /// exactly `old`), and writes its length table into the generation not in use. Returns the
    /// list's bits of the next `Settings::index` (none: left to the trie, with a warning naming
    /// `name`).
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
        let lengths = match self.fill(list, was_indexed, old, new) {
            Ok(l) => l,
            Err(e) => {
                log::warn!("list {name}: IPv6 lookups use the trie, not the index: {e}");
                return 0;
            }
        };
        let generation = u32::from(in_force & index_generation_bit(bits) == 0);
        let table = V6Lengths::of(lengths, self.table.0.buckets());
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

    fn fill(
        &mut self,
        list: u32,
        was_indexed: bool,
        old: &Prefixes<[u8; 16]>,
        new: &Prefixes<[u8; 16]>,
    ) -> Result<Vec<u32>, V6IndexFull> {
        let lengths = lengths_of(new)?;
        if !was_indexed {
            // Prefixes left from an earlier time the list was indexed, not in this version.
            let keep = new
                .keys()
                .map(|p| slot_of(list, p))
                .map(|s| (s.addr, s.tag))
                .collect();
            self.table.retain_list(list, &keep);
        }
        for p in new.keys().filter(|p| !was_indexed || !old.contains_key(p)) {
            self.table.insert(slot_of(list, p))?;
        }
        Ok(lengths)
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
            self.table.remove(&slot_of(list, p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::test_rng::Rng;
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

    fn table_of(list: u32, p: &Prefixes<[u8; 16]>, buckets: u32) -> PrefixTable<Vec<V6Bucket>> {
        let mut t = PrefixTable(vec![V6Bucket::default(); buckets as usize]);
        for k in p.keys() {
            t.insert(slot_of(list, k)).expect("fits");
        }
        t
    }

    /// The lookup XDP runs, over a table in memory.
    fn contains(t: &PrefixTable<Vec<V6Bucket>>, list: u32, lengths: &[u32], a: u128) -> bool {
        let table = V6Lengths::of(lengths.iter().copied(), t.0.buckets());
        v6_index_contains(list, &table, &v6_words(&a.to_be_bytes()), |b, tag, m| {
            t.0.get(b as usize).is_some_and(|bk| bk.holds(tag, m))
        })
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
            let t = table_of(2, &p, 64);
            let table_lengths = lengths_of(&p).expect("at most eight lengths");
            for _ in 0..5000 {
                let a = addr(&mut rng);
                assert_eq!(
                    contains(&t, 2, &table_lengths, a),
                    covered(&p, a),
                    "round {round}, address {a:x}"
                );
                // Lists do not see each other's entries.
                assert!(!contains(&t, 1, &table_lengths, a));
            }
        }
        // Host bits beyond the length are ignored, as the trie ignores them.
        let loose = prefixes(&[(48, "2001:db8:1:ffff::1")]);
        let t = table_of(0, &loose, 4);
        assert!(contains(&t, 0, &[48], base | 1 << 80 | 9));
    }

    /// A store that, after every clear, checks that every prefix that should be in the table
    /// is still found: moves never hide a prefix.
    struct Watched {
        buckets: Vec<V6Bucket>,
        present: Vec<V6Slot>,
        clears: usize,
    }

    impl BucketStore for Watched {
        fn buckets(&self) -> u32 {
            self.buckets.len() as u32
        }
        fn slot(&self, bucket: u32, i: usize) -> V6Slot {
            self.buckets.slot(bucket, i)
        }
        fn fill(&mut self, bucket: u32, i: usize, slot: V6Slot) {
            assert_eq!(self.buckets.slot(bucket, i).tag, 0, "filling a used slot");
            self.buckets.fill(bucket, i, slot);
        }
        fn clear(&mut self, bucket: u32, i: usize) {
            BucketStore::clear(&mut self.buckets, bucket, i);
            self.clears += 1;
            let view = PrefixTable(self.buckets.clone());
            for s in &self.present {
                assert!(view.find(s).is_some(), "{s:?} missing during a move");
            }
        }
    }

    #[test]
    fn a_full_table_moves_prefixes_without_hiding_them() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // 256 buckets, 768 slots: fill to 90%.
        let mut t = PrefixTable(Watched {
            buckets: vec![V6Bucket::default(); 256],
            present: Vec::new(),
            clears: 0,
        });
        let slots: Vec<V6Slot> = (0..691)
            .map(|_| {
                slot_of(
                    0,
                    &(128, rng.next().to_be_bytes().repeat(2).try_into().unwrap()),
                )
            })
            .collect();
        for s in &slots {
            t.insert(*s).expect("90% fits");
            t.0.present.push(*s);
        }
        for s in &slots {
            assert!(t.find(s).is_some());
        }
        assert!(
            t.0.clears > 0,
            "no prefix was moved: the test did not test moves"
        );
        // Removing frees the room again.
        for s in &slots[..100] {
            t.0.present.retain(|p| p != s);
            t.remove(s);
            assert!(t.find(s).is_none());
        }
        for s in &slots[..100] {
            t.insert(*s).expect("room again");
            t.0.present.push(*s);
        }
        // Past the capacity: refused, nothing lost.
        let mut refused = false;
        for _ in 0..200 {
            let s = slot_of(
                1,
                &(64, rng.next().to_be_bytes().repeat(2).try_into().unwrap()),
            );
            match t.insert(s) {
                Ok(()) => t.0.present.push(s),
                Err(V6IndexFull::Table(768)) => refused = true,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            refused,
            "a table of 1024 slots took more than 1024 prefixes"
        );
        for s in &t.0.present {
            assert!(t.find(s).is_some());
        }
    }

    #[test]
    fn retain_list_keeps_other_lists_and_wanted_prefixes() {
        let p = prefixes(&[(64, "2001:db8::"), (48, "2001:db8:1::")]);
        let mut t = table_of(0, &p, 8);
        for k in p.keys() {
            t.insert(slot_of(1, k)).unwrap();
        }
        let [a, b]: [(u32, [u8; 16]); 2] =
            p.keys().copied().collect::<Vec<_>>().try_into().unwrap();
        let kept = slot_of(0, &a);
        t.retain_list(0, &[(kept.addr, kept.tag)].into());
        assert!(t.find(&slot_of(0, &a)).is_some(), "kept");
        assert!(t.find(&slot_of(0, &b)).is_none(), "removed");
        assert!(t.find(&slot_of(1, &a)).is_some() && t.find(&slot_of(1, &b)).is_some());
    }

    #[test]
    fn length_tables() {
        let p = prefixes(&[
            (64, "2001:db8::"),
            (48, "2001:db8:1::"),
            (64, "2001:db8:2::"),
        ]);
        assert_eq!(lengths_of(&p).unwrap(), vec![64, 48]);
        assert!(lengths_of(&Prefixes::new()).unwrap().is_empty());
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
        assert_eq!(lengths_of(&many), Err(V6IndexFull::Lengths(9)));
    }
}
