//! The benchmark's fastest SYN flood generator, two ways of driving one SYN writer.
//!
//! `xdp_syn_flood` is run by BPF_PROG_TEST_RUN in live-frame mode (`BPF_F_TEST_XDP_LIVE_FRAMES`,
//! as xdp-tools' xdp-trafficgen sends): it writes its SYN (`SYN_TEMPLATE`, set by userspace at
//! load) into each frame whole, gives it a random source, source port and sequence number and
//! sends it out of the test run's interface (XDP_TX). Whole, because in live-frame mode a
//! frame's page comes back to the test run with whatever was last written into it, and a
//! receiver that answers in place (mailguard's SYN cookies: the SYN rewritten into a SYN-ACK
//! and sent back) shares the page.
//!
//! Where the kernel refuses live frames (some sandboxed kernels answer EPERM), the same SYNs
//! come from a relay: a few frames circle a veth pair of the generator's own, `xdp_syn_relay`
//! on one end and `xdp_bounce` (XDP_TX) on the other, and at every turn the relay writes a new
//! SYN into its frame and sends it both on around the circle and to the target interface
//! (`RELAY_TO`, a broadcast redirect). It runs until `RELAY_STOP` is set.
//!
//! The checksums use mailguard's own (guard-ebpf's `checksum`).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_BROADCAST, xdp_action},
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::{Array, DevMap, PerCpuArray},
    programs::XdpContext,
};
use guard_ebpf::checksum::{fold, sum16};

/// The generator's SYN: Ethernet (untagged), IPv4 without options, TCP without options.
const SYN_LEN: usize = 14 + 20 + 20;
const IPV4_AT: usize = 14;
const TCP_AT: usize = 14 + 20;

/// The SYN to send (Ethernet, IPv4, TCP), set at load (`override_global`); read-only.
#[unsafe(no_mangle)]
static SYN_TEMPLATE: [u8; SYN_LEN] = [0; SYN_LEN];

/// The relay's targets, key 0 and 1 (value: ifindex): the relay's own interface (on around the
/// circle) and the interface the flood goes out of. Written by userspace before the first frame.
#[map]
static RELAY_TO: DevMap = DevMap::with_max_entries(2, 0);

/// Key 0: nonzero once userspace wants the relay to stop (its frames are then dropped).
#[map]
static RELAY_STOP: Array<u32> = Array::with_max_entries(1, 0);

/// Key 0, per CPU: SYNs the relay has sent to the target.
#[map]
static RELAY_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `SYN_TEMPLATE` with a new source in the same /16 (its last two bytes), a new source port
/// and sequence number, and both checksums computed afresh.
#[xdp]
pub fn xdp_syn_flood(ctx: XdpContext) -> u32 {
    if write_syn(&ctx) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_ABORTED
    }
}

/// A new SYN into the circling frame, sent on around the circle and to the target; the frame
/// is dropped, and the circle ends, once `RELAY_STOP` is set.
#[xdp]
pub fn xdp_syn_relay(ctx: XdpContext) -> u32 {
    if RELAY_STOP.get(0).is_none_or(|stop| *stop != 0) || !write_syn(&ctx) {
        return xdp_action::XDP_DROP;
    }
    if let Some(sent) = RELAY_SENT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot of a per-CPU array; XDP programs do not preempt each other.
        unsafe { *sent += 1 };
    }
    RELAY_TO
        .redirect(0, u64::from(BPF_F_BROADCAST))
        .unwrap_or(xdp_action::XDP_DROP)
}

/// The circle's other end: every frame back where it came from.
#[xdp]
pub fn xdp_bounce(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Writes `SYN_TEMPLATE` into the frame with a new source, source port and sequence number;
/// false if the frame is too short.
#[inline(always)]
fn write_syn(ctx: &XdpContext) -> bool {
    let start = ctx.data();
    if start + SYN_LEN > ctx.data_end() {
        return false;
    }
    // SAFETY: the SYN_LEN bytes were bounds-checked above, and the frame is this run's alone.
    let p = unsafe { &mut *(start as *mut [u8; SYN_LEN]) };
    for (i, b) in p.iter_mut().enumerate() {
        // SAFETY: a read of a static; volatile so that the value set at load is read.
        *b = unsafe { core::ptr::read_volatile(&SYN_TEMPLATE[i]) };
    }
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
    true
}

guard_reference_ebpf::program_binary!();
