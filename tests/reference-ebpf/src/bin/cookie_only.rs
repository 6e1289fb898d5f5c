//! The benchmarks' reference for a SYN cookie: the floor plus the kernel's cookie for an
//! untagged IPv4 SYN without IP options (`bpf_tcp_raw_gen_syncookie_ipv4`, Linux 6.0, on the
//! packet's own headers), and nothing else: no policy, no rewrite, no answer. The benchmark
//! times it beside mailguard's cookie answer and xdp-filter: what any answer with the kernel's
//! cookie costs at the least.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{iphdr, tcphdr, xdp_action},
    helpers::generated::bpf_tcp_raw_gen_syncookie_ipv4,
    macros::xdp,
    programs::XdpContext,
};

const ETH_HDR: usize = 14;
const IPV4_HDR: usize = 20;
const TCP_HDR: usize = 20;

/// XDP_DROP with a cookie made; XDP_ABORTED when the packet is too short or the kernel made
/// none.
#[xdp]
pub fn xdp_cookie_only(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + ETH_HDR + IPV4_HDR + TCP_HDR > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: the helper reads the fixed IPv4 header and 20 bytes of TCP header, both
    // bounds-checked above.
    let cookie = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            (start + ETH_HDR) as *mut iphdr,
            (start + ETH_HDR + IPV4_HDR) as *mut tcphdr,
            TCP_HDR as u32,
        )
    };
    if cookie < 0 {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_DROP
}

guard_reference_ebpf::program_binary!();
