//! The list indexes: lookups whose cost does not grow with the list.
//!
//! # IPv4
//!
//! Each IPv4 list
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
//!
//! # IPv6
//!
//! An IPv6 list is a handful of prefix lengths with many prefixes each. Its index is a slot
//! per prefix in one table shared by the lists, a bucketed cuckoo hash (`V6Bucket`: two
//! candidate buckets of three slots per prefix, a cache line each) in an mmapable array that userspace writes
//! directly, keyed by (list, length, the address masked to the length), kept beside the trie
//! entry (added with it, removed with it); and a short table of each list's distinct lengths.
//! XDP masks the source to each length of the table and reads the prefix's two buckets: at most
//! `V6_INDEX_LENGTHS` × 2 bucket loads, whatever the size of the list. The length tables are
//! double-buffered like the IPv4 index (`index_area`), switched by the same `Settings::index`
//! write, with the IPv6 lists' bits above the IPv4 ones (`v6_list`). During a swap the table
//! holds both versions' prefixes (new ones added before the switch, old ones removed after),
//! so a source in both is found whichever length table a packet reads; a prefix moved to its
//! other bucket to make room is written there before it is cleared here, so it is never
//! missing either.
//!
//! A list with more than `V6_INDEX_LENGTHS` distinct lengths, or whose prefixes no longer fit
//! the table, is not indexed (its bit clear): XDP uses its trie.

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

/// A list's number in `Settings::index` for its IPv6 index (`INDEX_*` numbers the IPv4 ones).
#[inline(always)]
pub const fn v6_list(list: u32) -> u32 {
    INDEX_LISTS + list
}

/// The `Settings::index` bits saying which IPv6 lists are indexed, all lists together.
pub const V6_INDEX_ACTIVE_BITS: u32 = index_active_bit(v6_list(INDEX_MX_ALLOW))
    | index_active_bit(v6_list(INDEX_TRUSTED))
    | index_active_bit(v6_list(INDEX_BLOCK));

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

/// Distinct prefix lengths an indexed IPv6 list may have.
pub const V6_INDEX_LENGTHS: usize = 8;
/// Entries of the length tables: one per list and generation.
pub const V6_LENGTH_TABLES: u32 = INDEX_LISTS * 2;
/// Slots per bucket of the prefix table.
pub const V6_BUCKET_SLOTS: usize = 3;
/// Buckets of the prefix table as the object declares it; the loader sizes it from the
/// configuration (`v6_buckets_for`).
pub const V6_DEFAULT_BUCKETS: u32 = 1 << 16;

/// `V6Slot::tag` of a slot in use: this bit, a 15-bit fingerprint of the prefix (bits 16 to
/// 30), the list number (bits 8 to 15) and the prefix length (bits 0 to 7).
pub const V6_SLOT_USED: u32 = 1 << 31;
/// The fingerprint bits of a slot tag.
pub const V6_FINGERPRINT: u32 = 0x7fff << 16;

/// The tag of a prefix of `list` of length `len`, before its fingerprint (`v6_slot_tag`).
#[inline(always)]
pub const fn v6_tag(list: u32, len: u32) -> u32 {
    V6_SLOT_USED | (list << 8) | len
}

/// One prefix in the table: its `v6_tag` (0: free) and its address masked to its length (four
/// host-order words, most significant first).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Slot {
    pub tag: u32,
    pub addr: [u32; 4],
}
const _: () = assert!(core::mem::size_of::<V6Slot>() == 20);

/// A bucket of the prefix table: one array element, read by XDP with one lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Bucket {
    pub slots: [V6Slot; V6_BUCKET_SLOTS],
    /// Zero: the bucket fills one 64-byte cache line (the mmapable array's values start on a
    /// page), so that a bucket costs one line.
    pub reserved: u32,
}
const _: () = assert!(core::mem::size_of::<V6Bucket>() == 64);

impl V6Bucket {
    /// Whether a slot holds the prefix (`tag`: its slot tag, masked `addr`). The tag carries
    /// a fingerprint of the address, so a slot holding another prefix of the same list and
    /// length differs in its first word all but once in 32768: the cost does not depend on
    /// what the bucket holds.
    #[inline(always)]
    pub fn holds(&self, tag: u32, addr: &[u32; 4]) -> bool {
        let mut i = 0;
        while i < V6_BUCKET_SLOTS {
            let s = &self.slots[i];
            if s.tag == tag
                && s.addr[0] == addr[0]
                && s.addr[1] == addr[1]
                && s.addr[2] == addr[2]
                && s.addr[3] == addr[3]
            {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// Buckets of a table for `prefixes` prefixes (all lists, both versions during a swap): a
/// power of two, filled to at most 80%.
pub const fn v6_buckets_for(prefixes: u32) -> u32 {
    let slots = prefixes as u64 * 5 / 4;
    let buckets = slots.div_ceil(V6_BUCKET_SLOTS as u64);
    let mut b = 1u64;
    while b < buckets {
        b <<= 1;
    }
    b as u32
}

/// The hash of a prefix: its `v6_tag` and masked address.
#[inline(always)]
pub fn v6_hash(tag: u32, addr: &[u32; 4]) -> u64 {
    let hi = ((addr[0] as u64) << 32) | addr[1] as u64;
    let lo = ((addr[2] as u64) << 32) | addr[3] as u64;
    let mut x = hi.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ lo.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ (tag as u64).wrapping_mul(0x1656_67B1_9E37_79F9);
    x ^= x >> 29;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 32)
}

/// The slot tag of a prefix (`tag`: its `v6_tag`, `hash`: its `v6_hash`): the tag with the
/// fingerprint, bits of the hash mixed again so that they differ between prefixes that share
/// their buckets.
#[inline(always)]
pub fn v6_slot_tag(tag: u32, hash: u64) -> u32 {
    let fingerprint = ((hash ^ (hash >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB) >> 49) as u32;
    tag | (fingerprint << 16)
}

/// The two candidate buckets of a prefix (`hash`: its `v6_hash`) in a table of `buckets`
/// buckets (a power of two).
#[inline(always)]
pub fn v6_buckets(hash: u64, buckets: u32) -> (u32, u32) {
    let mask = buckets.wrapping_sub(1);
    (hash as u32 & mask, (hash >> 32) as u32 & mask)
}

/// The address words masked to prefix length `len` with `mask` (`v6_mask(len)`).
#[inline(always)]
pub fn v6_masked(addr: &[u32; 4], mask: &[u32; 4]) -> [u32; 4] {
    [
        addr[0] & mask[0],
        addr[1] & mask[1],
        addr[2] & mask[2],
        addr[3] & mask[3],
    ]
}

/// The mask of prefix length `len` (at most 128) as four host-order words.
pub const fn v6_mask(len: u32) -> [u32; 4] {
    [
        word_mask(len),
        word_mask(len.saturating_sub(32)),
        word_mask(len.saturating_sub(64)),
        word_mask(len.saturating_sub(96)),
    ]
}

/// The mask of the first `bits` bits of a word (all of it from 32 on).
const fn word_mask(bits: u32) -> u32 {
    if bits >= 32 {
        u32::MAX
    } else if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    }
}

/// An IPv6 address (network order bytes) as the index's words.
#[inline(always)]
pub fn v6_words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_be_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_be_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_be_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_be_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// The distinct prefix lengths of one version of an indexed IPv6 list, the value of its
/// length table: the first `count` of `lengths` are used, each with its mask (`v6_mask`,
/// computed here so that XDP masks without branches); `buckets`: the prefix table's size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct V6Lengths {
    pub count: u32,
    pub lengths: [u8; V6_INDEX_LENGTHS],
    pub buckets: u32,
    pub masks: [[u32; 4]; V6_INDEX_LENGTHS],
}
const _: () = assert!(core::mem::size_of::<V6Lengths>() == 16 + 16 * V6_INDEX_LENGTHS);

impl V6Lengths {
    /// The table of `lengths` (at most `V6_INDEX_LENGTHS` are taken, each at most 128) in a
    /// prefix table of `buckets`.
    pub fn of(lengths: impl IntoIterator<Item = u32>, buckets: u32) -> V6Lengths {
        let mut t = V6Lengths {
            buckets,
            ..V6Lengths::default()
        };
        for len in lengths.into_iter().take(V6_INDEX_LENGTHS) {
            let len = if len > 128 { 128 } else { len };
            t.lengths[t.count as usize] = len as u8;
            t.masks[t.count as usize] = v6_mask(len);
            t.count += 1;
        }
        t
    }
}

/// Whether `addr` (`v6_words`) is in list `list` by the length table `table`, by the lookup
/// XDP runs: for each length, whether `bucket_holds(bucket, tag, masked address)` says one of
/// the prefix's two buckets holds it (an array lookup in XDP; false for a bucket it cannot
/// read).
#[inline(always)]
pub fn v6_index_contains(
    list: u32,
    table: &V6Lengths,
    addr: &[u32; 4],
    bucket_holds: impl Fn(u32, u32, &[u32; 4]) -> bool,
) -> bool {
    let count = table.count as usize;
    for (i, (len, mask)) in table.lengths.iter().zip(table.masks.iter()).enumerate() {
        if i >= count {
            break;
        }
        let masked = v6_masked(addr, mask);
        let base = v6_tag(list, *len as u32);
        let hash = v6_hash(base, &masked);
        let tag = v6_slot_tag(base, hash);
        let (b1, b2) = v6_buckets(hash, table.buckets);
        if bucket_holds(b1, tag, &masked) || bucket_holds(b2, tag, &masked) {
            return true;
        }
    }
    false
}
