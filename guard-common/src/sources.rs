//! Where a source's state lives: the `SOURCES` table, a plain BPF array of `SourceBucket`s
//! indexed by a hash of the `SourceKey` that every side computes with the functions here (XDP
//! and sock_ops in the kernel, userspace for `mailguard top`, tests and benchmarks).
//!
//! - A bucket holds two slots: a key may live in either slot of its bucket
//!   `source_bucket(hash)` (two-way set-associative). A lookup compares at most two keys; a new
//!   source takes a free slot of its bucket, or else the one whose last SYN is older (that
//!   source is forgotten and starts again with a full bucket: fails open, never refuses
//!   anyone). Array lookups are inlined by the verifier, so a known source costs a hash and two
//!   compares instead of a hash-map walk.
//! - A bucket also counts the connections sock_ops counted for keys of that bucket (its
//!   presence count): an upper bound of each of those sources' counts. A count below a class's
//!   cap proves the source below it, so XDP reads the exact count (`CONNECTIONS`, a hash map)
//!   only when the bucket's count has reached the cap. Collisions only cost that lookup; a
//!   count is never missed, and no source is ever refused for another's connections.
//! - A bucket is 128 bytes, two cache lines aligned to their pair (the map is mmapable, so page
//!   aligned): a new source's SYN, which finds its slots, claims one and checks the presence
//!   count, touches memory in one place.
//!
//! The hash is fixed (not seeded): a collision can only make mailguard forget a source's rate
//! state (more permissive for that source) or read its exact count; it never refuses one
//! source for another's traffic, so choosing colliding addresses gains an attacker nothing.

use crate::budget::{SourceKey, SourceState};

/// One slot of a `SourceBucket`. An empty slot is all zero (`key.family` 0 matches no source).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    pub key: SourceKey,
    /// `SLOT_*` bits.
    pub flags: u32,
    pub state: SourceState,
}
const _: () = assert!(core::mem::size_of::<SourceSlot>() == 56);

/// One bucket of the `SOURCES` table: the connections counted for its keys and the two slots
/// its keys may occupy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBucket {
    /// Open connections sock_ops counted for keys whose bucket this is (added at establishment,
    /// removed at close, atomically; never below zero).
    pub connections: u32,
    /// Zero.
    pub reserved: [u32; 3],
    pub slots: [SourceSlot; 2],
}
const _: () = assert!(core::mem::size_of::<SourceBucket>() == 128);

/// `SourceSlot::flags`: the source was found in `VERIFIED` (it completed a connection), so the
/// SYN ceiling does not apply and `VERIFIED` need not be looked up again.
pub const SLOT_VERIFIED: u32 = 1 << 0;

/// Capacity of `SOURCES` in buckets for `budgets.tracked_sources` (two per bucket, at least one
/// bucket).
pub const fn source_buckets(tracked_sources: u32) -> u32 {
    let n = tracked_sources / 2 + (tracked_sources & 1);
    if n == 0 { 1 } else { n }
}

impl SourceKey {
    /// The key as five 32-bit words, in the host's byte order (the kernel programs and
    /// userspace run on the same host, so they agree).
    #[inline(always)]
    pub const fn words(&self) -> [u32; 5] {
        // SAFETY: both are 20 bytes of plain integers without padding; every bit pattern is a
        // valid `[u32; 5]`.
        unsafe { core::mem::transmute::<SourceKey, [u32; 5]>(*self) }
    }

    /// The key made of five words (as `words` returns them).
    #[inline(always)]
    pub const fn from_words(words: [u32; 5]) -> SourceKey {
        // SAFETY: as `words`; every bit pattern is a valid `SourceKey`.
        unsafe { core::mem::transmute::<[u32; 5], SourceKey>(words) }
    }

    /// The last word of a key: family, class and the reserved bytes (zero).
    #[inline(always)]
    pub const fn tag_word(family: u8, class: u8) -> u32 {
        u32::from_ne_bytes([family, class, 0, 0])
    }

    /// A 32-bit hash of the key, the index of its slots: the address halves and the tag word
    /// each multiplied by an odd constant (three independent multiplies, so they overlap), then
    /// folded and mixed by one more.
    #[inline(always)]
    pub const fn slot_hash(&self) -> u32 {
        let w = self.words();
        let high = ((w[0] as u64) << 32) | w[1] as u64;
        let low = ((w[2] as u64) << 32) | w[3] as u64;
        let h = high.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ low.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            ^ (w[4] as u64).wrapping_mul(0x1656_67b1_9e37_79f9);
        ((h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9) >> 32) as u32
    }

    /// Whether two keys are equal, compared word by word.
    #[inline(always)]
    pub const fn same(&self, other: &SourceKey) -> bool {
        let (a, b) = (self.words(), other.words());
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
    }
}

/// `hash` mapped onto `0..n` (multiply-shift: no division, any `n`).
#[inline(always)]
const fn reduce(hash: u32, n: u32) -> u32 {
    ((hash as u64 * n as u64) >> 32) as u32
}

/// The bucket of a key with `hash` in a table of `buckets` buckets.
#[inline(always)]
pub const fn source_bucket(hash: u32, buckets: u32) -> u32 {
    reduce(hash, buckets)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::{FAMILY_V4, MailClass, prefix_mask};

    fn v4(i: u32) -> SourceKey {
        SourceKey::v4(i.to_be_bytes(), [255; 4], MailClass::Mx as u8)
    }

    #[test]
    fn buckets_stay_in_range() {
        for buckets in [1u32, 8, 32_768, 550_000, 8_388_608] {
            for i in 0..10_000u32 {
                let h = v4(i.wrapping_mul(2_654_435_761)).slot_hash();
                let b = source_bucket(h, buckets);
                assert!(b < buckets, "bucket {b} of {buckets}");
            }
            assert_eq!(source_bucket(u32::MAX, buckets), buckets - 1);
            assert_eq!(source_bucket(0, buckets), 0);
        }
        assert_eq!(source_buckets(65_535), 32_768);
        assert_eq!(source_buckets(65_536), 32_768);
        assert_eq!(source_buckets(1), 1);
        assert_eq!(source_buckets(0), 1);
        assert_eq!(source_buckets(u32::MAX), 1 << 31);
    }

    #[test]
    fn the_hash_spreads_neighbouring_sources() {
        // 100k consecutive IPv4 sources (the worst case for a weak hash) over 131072 buckets:
        // about as many distinct buckets as random placement gives (1 - e^-0.76 = 53%).
        let buckets: HashSet<u32> = (0..100_000u32)
            .map(|i| source_bucket(v4(0xc612_0000 + i).slot_hash(), 131_072))
            .collect();
        assert!(buckets.len() > 50_000, "{} distinct buckets", buckets.len());
        // Classes and families of one address land apart.
        let a = v4(0xc612_0002);
        let b = SourceKey { class: 2, ..a };
        let c = SourceKey { family: 6, ..a };
        assert_ne!(a.slot_hash(), b.slot_hash());
        assert_ne!(a.slot_hash(), c.slot_hash());
    }

    #[test]
    fn keys_convert_to_words_and_back() {
        let a = v4(0xc612_0002);
        assert_eq!(SourceKey::from_words(a.words()), a);
        let w = a.words();
        assert_eq!(w[0].to_ne_bytes(), [0xc6, 0x12, 0, 2]);
        assert_eq!(w[4], SourceKey::tag_word(FAMILY_V4, MailClass::Mx as u8));
    }

    #[test]
    fn keys_compare_by_every_word() {
        let a = SourceKey::v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8],
            prefix_mask::<16>(64),
            MailClass::Mx as u8,
        );
        assert!(a.same(&a.clone()));
        for byte in 0..8 {
            let mut b = a;
            b.addr[byte] ^= 1;
            assert!(!a.same(&b), "address byte {byte}");
        }
        assert!(!a.same(&SourceKey { class: 3, ..a }));
        assert!(!a.same(&SourceKey {
            family: FAMILY_V4,
            ..a
        }));
        assert!(
            !SourceSlot::default().key.same(&v4(0)),
            "an empty slot matches no source"
        );
    }
}
