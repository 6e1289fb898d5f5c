//! Reference programs for tests and benchmarks, never loaded by mailguard itself:
//! - `xdp_floor`, the cheapest XDP program there is: `cargo xtask bench` reports mailguard's
//!   per-packet cost beside it, measured in the same run;
//! - `xdp_bucket_touch`, the floor plus the one memory access any per-source state costs: it
//!   reads and writes the bucket mailguard would use for the packet's source, in a table of
//!   its own laid out and sized as mailguard's `MG_SOURCES`, and nothing else. The benchmark
//!   times it beside a new source's SYN, to show what the table's memory costs by itself;
//! - `xdp_pass`, for the veth ends facing the test lab's bridge: native XDP on veth delivers
//!   frames sent with XDP_TX (mailguard's RSTs) only when the peer has an XDP program too;
//! - `xdp_syn_flood`, the benchmark's fastest SYN flood generator: run by BPF_PROG_TEST_RUN in
//!   live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, as xdp-tools' xdp-trafficgen sends), it
//!   gives each copy of its SYN a random source, source port and sequence number and sends it
//!   out of the test run's interface (XDP_TX).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, xdp_action},
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use guard_common::{FAMILY_V4, MailClass, SourceBucket, SourceKey, source_bucket};
use guard_ebpf::checksum::{fold, sum16};

/// `TOUCH_TABLE`'s capacity in buckets, set by the benchmark.
/// key: `u32` 0; value: `u32` buckets (host order); capacity: 1.
#[map(name = "REF_TOUCH_BUCKETS")]
static TOUCH_BUCKETS: Array<u32> = Array::with_max_entries(1, 0);

/// `xdp_bucket_touch`'s table, as `MG_SOURCES`: mmapable (page aligned), 128-byte buckets.
/// key: `u32` `source_bucket(key.slot_hash(), buckets)`; value: `SourceBucket`, whose
/// `connections` counts the runs that touched it (host order); capacity: set at load.
#[map(name = "REF_TOUCH_TABLE")]
static TOUCH_TABLE: Array<SourceBucket> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

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

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The generator's SYN: Ethernet (untagged), IPv4 without options, TCP without options.
const SYN_LEN: usize = 14 + 20 + 20;
const IPV4_AT: usize = 14;
const TCP_AT: usize = 14 + 20;

/// The SYN the test run was given, with a new source in the same /16 (its last two bytes), a
/// new source port and sequence number, and both checksums computed afresh (in live-frame
/// mode a frame may keep an earlier run's rewrite, so nothing is updated incrementally).
#[xdp]
pub fn xdp_syn_flood(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + SYN_LEN > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the SYN_LEN bytes were bounds-checked above, and the frame is this run's alone.
    let p = unsafe { &mut *(start as *mut [u8; SYN_LEN]) };
    // SAFETY: helpers without preconditions.
    let (a, b) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    p[IPV4_AT + 14..IPV4_AT + 16].copy_from_slice(&(a as u16).to_be_bytes());
    p[IPV4_AT + 10..IPV4_AT + 12].copy_from_slice(&[0, 0]);
    let ip = fold(sum16(&p[IPV4_AT..TCP_AT]));
    p[IPV4_AT + 10..IPV4_AT + 12].copy_from_slice(&ip.to_be_bytes());
    p[TCP_AT..TCP_AT + 2].copy_from_slice(&((a >> 16) as u16 | 1024).to_be_bytes());
    p[TCP_AT + 4..TCP_AT + 8].copy_from_slice(&b.to_be_bytes());
    p[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&[0, 0]);
    // Pseudo-header: source and destination addresses, protocol, TCP length.
    let pseudo = sum16(&p[IPV4_AT + 12..IPV4_AT + 20]) + 6 + 20;
    let tcp = fold(pseudo + sum16(&p[TCP_AT..SYN_LEN]));
    p[TCP_AT + 16..TCP_AT + 18].copy_from_slice(&tcp.to_be_bytes());
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
