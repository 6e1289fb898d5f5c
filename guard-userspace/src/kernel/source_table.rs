//! The `SOURCES` table (`MG_SOURCES`: rate state per source, see guard-common's `sources`)
//! read from userspace as memory: `status` and `top` read millions of slots without a system
//! call per slot.

use aya::maps::Map;
use guard_common::{
    SourceBucket, SourceKey, SourceSlot, SourceState, maps as names, source_bucket,
};

use crate::kernel::mapped::{MappedArray, MappedError};

/// A read-only view of every bucket.
pub struct SourceTable {
    buckets: MappedArray<SourceBucket>,
}

impl SourceTable {
    /// Maps the table of a loaded or pinned `SOURCES` map.
    pub fn open(map: &Map) -> Result<SourceTable, MappedError> {
        Ok(SourceTable {
            buckets: MappedArray::open(map, names::SOURCES, false)?,
        })
    }

    /// Number of slots (two per bucket).
    pub fn capacity(&self) -> usize {
        self.buckets.len() * 2
    }

    /// A copy of bucket `i` (`i < capacity() / 2`). XDP writes slots while they are read: a
    /// slot read mid-write may mix two sources (statistics only).
    pub fn bucket(&self, i: usize) -> SourceBucket {
        self.buckets.get(i)
    }

    /// The slots holding a source.
    pub fn in_use(&self) -> impl Iterator<Item = SourceSlot> + '_ {
        (0..self.buckets.len())
            .flat_map(|i| self.bucket(i).slots)
            .filter(|s| s.key.family != 0)
    }

    /// The slot of `key`, if tracked.
    pub fn find_slot(&self, key: &SourceKey) -> Option<SourceSlot> {
        let b = source_bucket(key.slot_hash(), self.buckets.len() as u32) as usize;
        self.bucket(b).slots.into_iter().find(|s| s.key.same(key))
    }

    /// The rate state of `key`, if tracked.
    pub fn find(&self, key: &SourceKey) -> Option<SourceState> {
        self.find_slot(key).map(|s| s.state)
    }
}
