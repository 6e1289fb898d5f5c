//! The per-source table as the kernel programs use it (layout and hashing: guard-common's
//! `sources`): the `SOURCES` bucket of a key, whose slots XDP finds or claims and whose
//! connection count sock_ops keeps and XDP reads.
//!
//! Slots are plain array memory shared by every CPU and written without locks: two CPUs
//! claiming the same slot at once for different sources can leave it with a mixed key, which
//! matches no source and is reclaimed like any other; the rate state is statistics and GCRA
//! time, where a lost update lets one SYN more or less through. The connection count is
//! changed only by atomic adds.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use guard_common::{
    AccountingEvent, SLOT_VERIFIED, SourceBucket, SourceKey, SourceSlot, SourceState, source_bucket,
};

use crate::maps::{ACCOUNTING, SOURCES};

/// The bucket of a key: the two slots the key may occupy and the connection count of every
/// key of the bucket.
#[derive(Clone, Copy)]
pub struct Bucket {
    ptr: *mut SourceBucket,
}

impl Bucket {
    /// The bucket of a key with `hash` in a table of `buckets` buckets; `None` when `buckets`
    /// was larger than the map (a configuration mismatch: the caller fails open).
    #[inline(always)]
    pub fn of(hash: u32, buckets: u32) -> Option<Bucket> {
        let ptr = SOURCES.get_ptr_mut(source_bucket(hash, buckets))?;
        Some(Bucket { ptr })
    }

    /// The slot holding `key`, if either does.
    #[inline(always)]
    pub fn find(self, key: &SourceKey) -> Option<*mut SourceSlot> {
        // Both slots compared before either answer is used: a source costs the same in either
        // slot of its bucket (the cost does not depend on which sources came first).
        // SAFETY: a map value pointer, valid while the program runs.
        unsafe {
            let first = &raw mut (*self.ptr).slots[0];
            let second = &raw mut (*self.ptr).slots[1];
            let hits = (*first).key.same(key) as u32 | ((*second).key.same(key) as u32) << 1;
            match hits {
                0 => None,
                1 | 3 => Some(first),
                _ => Some(second),
            }
        }
    }

    /// Gives `key` a slot: an empty one, or else the one whose last SYN is older (its source
    /// is forgotten; counted as an eviction). The new state has a full rate bucket.
    #[inline(always)]
    pub fn claim(self, key: &SourceKey, flags: u32, now: u64) -> *mut SourceSlot {
        // SAFETY: as `find`.
        let (first, second) =
            unsafe { (&raw mut (*self.ptr).slots[0], &raw mut (*self.ptr).slots[1]) };
        if claim_slot(first, second, key, flags, now) == 0 {
            first
        } else {
            second
        }
    }

    /// Whether a source of this bucket may hold `cap` or more counted connections: the bucket
    /// counts the open connections of every key of the bucket, so a count below `cap` proves
    /// the source's own below it, and only a count at or over `cap` (its sources near their
    /// cap, or a crowded bucket) sends XDP to the exact count.
    #[inline(always)]
    pub fn may_be_at_cap(self, cap: u32) -> bool {
        // SAFETY: as `find`; an aligned u32 load is whole.
        unsafe { core::ptr::read_volatile(&raw const (*self.ptr).connections) >= cap }
    }

    /// Flags the slot of `key`, if it has one, as a source seen completing a connection
    /// (sock_ops, at establishment). A plain write: should XDP give the slot to another source
    /// at that instant, that source is spared the SYN ceiling by mistake, or the flag is lost
    /// (XDP finds the source in `VERIFIED` when the ceiling is spent).
    #[inline(always)]
    pub fn mark_verified(self, key: &SourceKey) {
        if let Some(slot) = self.find(key) {
            // SAFETY: as `find`.
            unsafe { (*slot).flags |= SLOT_VERIFIED };
        }
    }

    /// Adds one counted connection to the bucket (sock_ops, at establishment).
    #[inline(always)]
    pub fn connection_up(self) {
        // SAFETY: as `find`; an atomic add.
        unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(
                &raw mut (*self.ptr).connections,
                1,
            )
        };
    }

    /// Removes one counted connection from the bucket (sock_ops, at close); a bucket already
    /// at zero (a table recreated under open connections) stays there.
    #[inline(always)]
    pub fn connection_down(self) {
        // SAFETY: as `find`; an atomic add of -1, after a whole aligned load.
        unsafe {
            let n = &raw mut (*self.ptr).connections;
            if core::ptr::read_volatile(n) != 0 {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(n, u32::MAX);
            }
        }
    }
}

/// `Bucket::claim`'s work, a BPF subprogram: only new sources pay the call, and the verifier
/// continues the caller from its one scalar result instead of from every path inside. Returns
/// which slot it wrote: 0 for `first`, 1 for `second`.
#[inline(never)]
fn claim_slot(
    first: *mut SourceSlot,
    second: *mut SourceSlot,
    key: &SourceKey,
    flags: u32,
    now: u64,
) -> u32 {
    // SAFETY: pointers into a map value, valid while the program runs.
    unsafe {
        let index = if (*first).key.family == 0 {
            0
        } else if (*second).key.family == 0 {
            1
        } else {
            record(AccountingEvent::SourceEvicted);
            ((*first).state.last_ns > (*second).state.last_ns) as u32
        };
        let slot = if index == 0 { first } else { second };
        *slot = SourceSlot {
            key: *key,
            flags,
            state: SourceState {
                tat_ns: now,
                first_ns: now,
                last_ns: now,
                syns: 0,
                refused: 0,
            },
        };
        record(AccountingEvent::SourceTracked);
        index
    }
}

#[inline(always)]
pub fn record(event: AccountingEvent) {
    if let Some(c) = ACCOUNTING.get_ptr_mut(event as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
}
