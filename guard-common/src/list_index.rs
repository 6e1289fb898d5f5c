//! The IPv4 list index: a lookup whose cost does not grow with the list. Each IPv4 list
//! (`mx_allow`, `trusted`, `block`) is expanded by userspace into three levels of plain arrays,
//! in the style of DIR-24-8, read by XDP with at most three inlined array loads:
//!
//! - level 16, one entry per /16 of the address space: `NONE`, `COVERED` (a prefix of /16 or
//!   shorter covers all of it), or `CHILD + b`: block `b` of level 24;
//! - level 24, blocks of 256 entries, one per /24 of that /16: `NONE`, `COVERED`, or
//!   `CHILD + m`: bitmap `m` of level 32;
//! - level 32, 256-bit bitmaps (four `u64` words), one bit per address of that /24.
//!
//! Every list has two generations of all three levels. Userspace writes the generation not in
//! use, then flips the list's generation bit in `Settings::index` with one map write: a packet
//! reads the settings once and sees one whole version of the list, old or new, never a mix, so
//! a source in both versions is never missed while a list is replaced.
//!
//! A list whose expansion needs more than `V4_INDEX_BLOCKS` partial /16s or `V4_INDEX_BITMAPS`
//! partial /24s is not indexed: its `Settings::index` bit stays clear and XDP uses its LPM trie.
//! The tries stay the lists' record (and hold the block list's expiries) either way.

/// The lists, as indexes into the index maps and `Settings::index` bits.
pub const INDEX_MX_ALLOW: u32 = 0;
pub const INDEX_TRUSTED: u32 = 1;
pub const INDEX_BLOCK: u32 = 2;
pub const INDEX_LISTS: u32 = 3;

/// Partial /16s (level-24 blocks) per list and generation.
pub const V4_INDEX_BLOCKS: u32 = 1024;
/// Partial /24s (level-32 bitmaps) per list and generation.
pub const V4_INDEX_BITMAPS: u32 = 16384;

/// Entries of the index maps: level 16 (`u32`), level 24 (`u32`), level 32 (`u64` words).
pub const V4_INDEX_16_ENTRIES: u32 = INDEX_LISTS * 2 * 65536;
pub const V4_INDEX_24_ENTRIES: u32 = INDEX_LISTS * 2 * V4_INDEX_BLOCKS * 256;
pub const V4_INDEX_32_ENTRIES: u32 = INDEX_LISTS * 2 * V4_INDEX_BITMAPS * 4;

/// Entry values of levels 16 and 24.
pub const INDEX_NONE: u32 = 0;
pub const INDEX_COVERED: u32 = 1;
/// `INDEX_CHILD + n` points at block or bitmap `n` of the next level.
pub const INDEX_CHILD: u32 = 2;

/// `Settings::index`: the list is indexed (bit `2 * list`) and which generation is in use
/// (bit `2 * list + 1`).
#[inline(always)]
pub const fn index_active_bit(list: u32) -> u32 {
    1 << (2 * list)
}

#[inline(always)]
pub const fn index_generation_bit(list: u32) -> u32 {
    1 << (2 * list + 1)
}

/// The area (list and generation) of a lookup: 0..6.
#[inline(always)]
pub const fn index_area(list: u32, generation: u32) -> u32 {
    list * 2 + (generation & 1)
}

/// Slot in level 16 of `addr` (host order).
#[inline(always)]
pub const fn v4_slot_16(area: u32, addr: u32) -> u32 {
    (area << 16) | (addr >> 16)
}

/// Slot in level 24 of `addr` within `block`.
#[inline(always)]
pub const fn v4_slot_24(area: u32, block: u32, addr: u32) -> u32 {
    ((area * V4_INDEX_BLOCKS + block % V4_INDEX_BLOCKS) << 8) | ((addr >> 8) & 0xff)
}

/// Word in level 32 holding `addr`'s bit within `bitmap`, and the bit.
#[inline(always)]
pub const fn v4_slot_32(area: u32, bitmap: u32, addr: u32) -> (u32, u32) {
    (
        ((area * V4_INDEX_BITMAPS + bitmap % V4_INDEX_BITMAPS) << 2) | ((addr >> 6) & 3),
        addr & 63,
    )
}

/// Whether `addr` (host order) is in the list version of `area`, reading the levels through
/// the three getters (map lookups in XDP, memory in userspace). A getter answers 0 for an
/// element it cannot read: "none", "not in the list".
#[inline(always)]
pub fn v4_index_contains(
    area: u32,
    addr: u32,
    level16: impl Fn(u32) -> u32,
    level24: impl Fn(u32) -> u32,
    level32: impl Fn(u32) -> u64,
) -> bool {
    let a = level16(v4_slot_16(area, addr));
    if a < INDEX_CHILD {
        return a == INDEX_COVERED;
    }
    let b = level24(v4_slot_24(area, a - INDEX_CHILD, addr));
    if b < INDEX_CHILD {
        return b == INDEX_COVERED;
    }
    let (word, bit) = v4_slot_32(area, b - INDEX_CHILD, addr);
    (level32(word) >> bit) & 1 != 0
}
