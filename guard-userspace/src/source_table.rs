//! The `SOURCES` table (`MG_SOURCES`: rate state per source, see guard-common's `sources`) read from
//! userspace. The map is created mmapable, so the whole table is one read-only mapping: `status`
//! and `top` read millions of slots without a system call per slot.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::Map;
use guard_common::{SourceKey, SourceSlot, SourceState, source_pair};

#[derive(Debug, thiserror::Error)]
pub enum SourceTableError {
    #[error("map `MG_SOURCES` is not an array")]
    NotAnArray,
    #[error("map `MG_SOURCES`: {0}")]
    Info(#[source] aya::maps::MapError),
    #[error("cannot map `MG_SOURCES` into memory: {0}")]
    Mmap(#[source] io::Error),
}

/// A read-only view of every slot.
pub struct SourceTable {
    slots: NonNull<SourceSlot>,
    len: usize,
}

impl SourceTable {
    /// Maps the table of a loaded or pinned `SOURCES` map.
    pub fn open(map: &Map) -> Result<SourceTable, SourceTableError> {
        let Map::Array(data) = map else {
            return Err(SourceTableError::NotAnArray);
        };
        let len = data.info().map_err(SourceTableError::Info)?.max_entries() as usize;
        let bytes = len * size_of::<SourceSlot>();
        // SAFETY: a shared read-only mapping of the map's fd, of the map's own size; the kernel
        // checks both (the map must be BPF_F_MMAPABLE).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(SourceTableError::Mmap(io::Error::last_os_error()));
        }
        Ok(SourceTable {
            slots: NonNull::new(ptr.cast()).ok_or(SourceTableError::NotAnArray)?,
            len,
        })
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.len
    }

    /// A copy of slot `i` (`i < capacity()`). XDP writes slots while they are read: a slot read
    /// mid-write may mix two sources (statistics only).
    pub fn slot(&self, i: usize) -> SourceSlot {
        assert!(i < self.len, "slot {i} of {}", self.len);
        // SAFETY: inside the mapping; a volatile read, as the kernel writes concurrently.
        unsafe { self.slots.as_ptr().add(i).read_volatile() }
    }

    /// The slots holding a source.
    pub fn in_use(&self) -> impl Iterator<Item = SourceSlot> + '_ {
        (0..self.len)
            .map(|i| self.slot(i))
            .filter(|s| s.key.family != 0)
    }

    /// The rate state of `key`, if tracked.
    pub fn find(&self, key: &SourceKey) -> Option<SourceState> {
        let first = source_pair(key.slot_hash(), self.len as u32) as usize;
        (first..first + 2)
            .map(|i| self.slot(i))
            .find(|s| s.key.same(key))
            .map(|s| s.state)
    }
}

impl Drop for SourceTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe {
            libc::munmap(
                self.slots.as_ptr().cast(),
                self.len * size_of::<SourceSlot>(),
            )
        };
    }
}
