//! BPF array maps created mmapable (`BPF_F_MMAPABLE`), seen from userspace as memory: the
//! source table read by `status` and `top`, and the IPv4 list index the daemon writes. No
//! system call per element.

use std::{
    io,
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::Arc,
};

use aya::maps::Map;

#[derive(Debug, thiserror::Error)]
pub enum MappedError {
    #[error("map `{0}` is not an array")]
    NotAnArray(&'static str),
    #[error("map `{name}`: {source}")]
    Info {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map `{name}`: value size {found}, expected {expected}")]
    ValueSize {
        name: &'static str,
        found: usize,
        expected: usize,
    },
    #[error("cannot map `{name}` into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The elements of an mmapable array map, each a `T` of the map's value size, laid out as the
/// kernel lays them out: `round_up(value_size, 8)` bytes apart (a `u32` array takes 8 bytes
/// per element).
/// A clone shares the mapping (unmapped when the last goes): the daemon maps its tables once,
/// not at every update.
pub struct MappedArray<T> {
    region: Arc<Region>,
    len: usize,
    stride: usize,
    _values: PhantomData<T>,
}

/// One mapping, unmapped on drop.
struct Region {
    base: NonNull<u8>,
    bytes: usize,
}

// SAFETY: the mapping is shared memory owned by the kernel map; access goes through volatile
// reads and writes of whole elements.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}

impl<T> Clone for MappedArray<T> {
    fn clone(&self) -> Self {
        MappedArray {
            region: self.region.clone(),
            len: self.len,
            stride: self.stride,
            _values: PhantomData,
        }
    }
}

impl<T: Copy> MappedArray<T> {
    /// Maps `map` (an array named `name`), read-only or writable.
    pub fn open(map: &Map, name: &'static str, writable: bool) -> Result<Self, MappedError> {
        let Map::Array(data) = map else {
            return Err(MappedError::NotAnArray(name));
        };
        let info = data
            .info()
            .map_err(|source| MappedError::Info { name, source })?;
        let value_size = info.value_size() as usize;
        if value_size != size_of::<T>() {
            return Err(MappedError::ValueSize {
                name,
                found: value_size,
                expected: size_of::<T>(),
            });
        }
        // The kernel keeps array elements 8-byte aligned.
        let stride = value_size.next_multiple_of(8);
        let len = info.max_entries() as usize;
        let bytes = len * stride;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a shared mapping of the map's fd, of the map's own size; the kernel checks
        // both (the map must be BPF_F_MMAPABLE) and keeps the map alive while it is mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                prot,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MappedError::Mmap {
                name,
                source: io::Error::last_os_error(),
            });
        }
        Ok(MappedArray {
            region: Arc::new(Region {
                base: NonNull::new(ptr.cast()).expect("mmap returned a mapping"),
                bytes,
            }),
            len,
            stride,
            _values: PhantomData,
        })
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: usize) -> *mut T {
        assert!(i < self.len, "element {i} of {}", self.len);
        // SAFETY: inside the mapping (checked above); elements are `stride` bytes apart.
        unsafe { self.region.base.as_ptr().add(i * self.stride).cast() }
    }

    /// A copy of element `i`. The kernel may write it meanwhile: a read can see a mix of two
    /// versions of a multi-word element.
    pub fn get(&self, i: usize) -> T {
        // SAFETY: a whole element inside the mapping; volatile, as the kernel writes too.
        unsafe { self.at(i).read_volatile() }
    }

    /// Writes element `i` (the mapping must be writable).
    pub fn set(&mut self, i: usize, value: T) {
        // SAFETY: as `get`.
        unsafe { self.at(i).write_volatile(value) }
    }

    /// Element `i`'s place in the mapping, for writes that must reach XDP in a given order
    /// (field by field, with fences between; the mapping must be writable).
    pub fn element_ptr(&mut self, i: usize) -> *mut T {
        self.at(i)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once (by its last holder).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
