//! The benchmarks' memory reference for new sources: the floor plus the one memory access any
//! per-source state costs. It reads and writes the bucket mailguard would use for the packet's
//! source, in a table of its own laid out and sized as mailguard's `MG_SOURCES`, and nothing
//! else. The benchmark times it beside a new source's SYN, to show what the table's memory
//! costs by itself.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use guard_common::{FAMILY_V4, MailClass, SourceBucket, SourceKey, source_bucket};

/// `TOUCH_TABLE`'s capacity in buckets, set by the benchmark.
/// key: `u32` 0; value: `u32` buckets (host order); capacity: 1.
#[map(name = "REF_TOUCH_BUCKETS")]
static TOUCH_BUCKETS: Array<u32> = Array::with_max_entries(1, 0);

/// `xdp_bucket_touch`'s table, as `MG_SOURCES`: mmapable (page aligned), 128-byte buckets.
/// key: `u32` `source_bucket(key.slot_hash(), buckets)`; value: `SourceBucket`, whose
/// `connections` counts the runs that touched it (host order); capacity: set at load.
#[map(name = "REF_TOUCH_TABLE")]
static TOUCH_TABLE: Array<SourceBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Ethernet (untagged) and IPv4 up to the source address: the benchmark's new-source packets.
const IPV4_SOURCE: usize = 14 + 12;

#[xdp]
pub fn xdp_bucket_touch(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IPV4_SOURCE + 4 > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the 4 bytes were bounds-checked above.
    let source = unsafe { core::ptr::read_unaligned((start + IPV4_SOURCE) as *const u32) };
    // Keyed as mailguard keys a port-25 source with the default /32 prefix.
    let key = SourceKey::from_words([
        source,
        0,
        0,
        0,
        SourceKey::tag_word(FAMILY_V4, MailClass::Mx as u8),
    ]);
    let Some(buckets) = TOUCH_BUCKETS.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(bucket) = TOUCH_TABLE.get_ptr_mut(source_bucket(key.slot_hash(), *buckets)) else {
        return xdp_action::XDP_ABORTED;
    };
    // One load in each of the bucket's two cache lines, as a lookup of its two slots does, and
    // one store, as a claim does.
    // SAFETY: a map value pointer, valid while the program runs.
    unsafe {
        core::ptr::read_volatile(&raw const (*bucket).slots[1].flags);
        let count = core::ptr::read_volatile(&raw const (*bucket).connections);
        core::ptr::write_volatile(&raw mut (*bucket).connections, count.wrapping_add(1));
    }
    xdp_action::XDP_DROP
}

guard_reference_ebpf::program_binary!();
