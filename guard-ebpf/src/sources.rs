//! The per-source tables as the kernel programs use them (layout and hashing: guard-common's
//! `sources`): the `SOURCES` slot pair of a key, found or claimed by XDP, and the
//! `CONN_PRESENCE` filter, kept by sock_ops and read by XDP.
//!
//! Slots are plain array memory shared by every CPU and written without locks: two CPUs
//! claiming the same slot at once for different sources can leave it with a mixed key, which
//! matches no source and is reclaimed like any other; the rate state is statistics and GCRA
//! time, where a lost update lets one SYN more or less through.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use guard_common::{
    AccountingEvent, SourceKey, SourceSlot, SourceState, presence_slot, source_pair,
};

use crate::maps::{ACCOUNTING, CONN_PRESENCE, SOURCES};

/// The two slots a source may occupy: `first` and `first + 1`.
#[derive(Clone, Copy)]
pub struct Pair {
    first: u32,
}

impl Pair {
    /// The pair of a key with `hash` in a table of `slots` slots.
    #[inline(always)]
    pub fn of(hash: u32, slots: u32) -> Pair {
        Pair {
            first: source_pair(hash, slots),
        }
    }

    /// The slot holding `key`, if either does (`None` also when `slots` was larger than the
    /// map, a configuration mismatch: the caller then claims, which fails, and fails open).
    #[inline(always)]
    pub fn find(self, key: &SourceKey) -> Option<*mut SourceSlot> {
        let first = SOURCES.get_ptr_mut(self.first)?;
        let second = SOURCES.get_ptr_mut(self.first + 1)?;
        // Both slots compared before either answer is used: a source costs the same in either
        // slot of its pair (the cost does not depend on which sources came first).
        // SAFETY: map value pointers, valid while the program runs.
        let hits = unsafe { (*first).key.same(key) as u32 | ((*second).key.same(key) as u32) << 1 };
        match hits {
            0 => None,
            1 | 3 => Some(first),
            _ => Some(second),
        }
    }

    /// Gives `key` a slot with a full bucket: an empty one, or else the one whose last SYN is
    /// older (its source is forgotten; counted as an eviction). `None` when the pair is
    /// outside the map.
    #[inline(always)]
    pub fn claim(self, key: &SourceKey, flags: u32, now: u64) -> Option<*mut SourceSlot> {
        let index = claim_slot(self.first, key, flags, now);
        SOURCES.get_ptr_mut(index)
    }
}

/// `Pair::claim`'s work, a BPF subprogram: only new sources pay the call, and the verifier
/// continues the caller from its one scalar result instead of from every path inside. Returns
/// the slot written, or `u32::MAX`.
#[inline(never)]
fn claim_slot(first: u32, key: &SourceKey, flags: u32, now: u64) -> u32 {
    let (Some(a), Some(b)) = (SOURCES.get_ptr_mut(first), SOURCES.get_ptr_mut(first + 1)) else {
        return u32::MAX;
    };
    // SAFETY: map value pointers, valid while the program runs.
    let (slot, index) = unsafe {
        if (*a).key.family == 0 {
            (a, first)
        } else if (*b).key.family == 0 {
            (b, first + 1)
        } else {
            record(AccountingEvent::SourceEvicted);
            if (*a).state.last_ns <= (*b).state.last_ns {
                (a, first)
            } else {
                (b, first + 1)
            }
        }
    };
    // SAFETY: as above.
    unsafe {
        *slot = SourceSlot {
            key: *key,
            flags,
            state: SourceState {
                tat_ns: now,
                syns: 0,
                refused: 0,
                first_ns: now,
                last_ns: now,
            },
        }
    };
    record(AccountingEvent::SourceTracked);
    index
}

/// Whether a source with `hash` may hold `cap` or more counted connections: its presence slot
/// counts the open connections of every key sharing the slot, so a count below `cap` proves
/// the source's own below it, and only a slot at or over `cap` (its sources near their cap, or
/// a crowded slot) sends XDP to the exact count. A missing slot reads as true.
#[inline(always)]
pub fn may_be_at_cap(hash: u32, slots: u32, cap: u32) -> bool {
    match CONN_PRESENCE.get(presence_slot(hash, slots)) {
        Some(n) => *n >= cap,
        None => true,
    }
}

/// Adds one counted connection to the presence slot of `hash` (sock_ops, at establishment).
#[inline(always)]
pub fn presence_up(hash: u32, slots: u32) {
    if let Some(n) = CONN_PRESENCE.get_ptr_mut(presence_slot(hash, slots)) {
        // SAFETY: a map value pointer, valid while the program runs; an atomic add.
        unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(n, 1) };
    }
}

/// Removes one counted connection from the presence slot of `hash` (sock_ops, at close); a
/// slot already at zero (a filter recreated under open connections) stays there.
#[inline(always)]
pub fn presence_down(hash: u32, slots: u32) {
    if let Some(n) = CONN_PRESENCE.get_ptr_mut(presence_slot(hash, slots)) {
        // SAFETY: as `presence_up`; a plain aligned load is whole.
        unsafe {
            if core::ptr::read_volatile(n) != 0 {
                atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(n, u32::MAX);
            }
        }
    }
}

#[inline(always)]
pub fn record(event: AccountingEvent) {
    if let Some(c) = ACCOUNTING.get_ptr_mut(event as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *c += 1 };
    }
}
