//! The `SOURCES` table (`MG_SOURCES`: rate state per source, see guard-common's `sources`)
//! read from userspace as memory: `status` and `top` read millions of slots without a system
//! call per slot.

use aya::maps::Map;
use guard_common::{SourceKey, SourceSlot, SourceState, maps as names, source_pair};

use crate::mapped::{MappedArray, MappedError};

/// A read-only view of every slot.
pub struct SourceTable {
    slots: MappedArray<SourceSlot>,
}

impl SourceTable {
    /// Maps the table of a loaded or pinned `SOURCES` map.
    pub fn open(map: &Map) -> Result<SourceTable, MappedError> {
        Ok(SourceTable {
            slots: MappedArray::open(map, names::SOURCES, false)?,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// A copy of slot `i` (`i < capacity()`). XDP writes slots while they are read: a slot read
    /// mid-write may mix two sources (statistics only).
    pub fn slot(&self, i: usize) -> SourceSlot {
        self.slots.get(i)
    }

    /// The slots holding a source.
    pub fn in_use(&self) -> impl Iterator<Item = SourceSlot> + '_ {
        (0..self.capacity())
            .map(|i| self.slot(i))
            .filter(|s| s.key.family != 0)
    }

    /// The rate state of `key`, if tracked.
    pub fn find(&self, key: &SourceKey) -> Option<SourceState> {
        let first = source_pair(key.slot_hash(), self.capacity() as u32) as usize;
        (first..first + 2)
            .map(|i| self.slot(i))
            .find(|s| s.key.same(key))
            .map(|s| s.state)
    }
}
