//! The program on the veth ends facing the test lab's bridge: native XDP on veth delivers
//! frames sent with XDP_TX (mailguard's RSTs and SYN-ACKs) only when the peer has an XDP program
//! too. It passes every frame but those to the spoofed floods' sources (IPv4 198.19.0.0/16):
//! the answers to a spoofed flood (SYN cookies' SYN-ACKs) go on from a real mail host's switch
//! into the network toward addresses that are no one's, which is the network's work, not the
//! mail host's; here they would cross the bridge into the attacker's namespace on the same
//! CPUs as the mail host. They are dropped where they enter the switch, as the floods' SYNs from
//! the XDP generator enter the mail host without the bridge's forwarding.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Ethernet header, then the IPv4 header's destination address at 16.
const ETHERTYPE_AT: usize = 12;
const IPV4_DST_AT: usize = 14 + 16;
/// The spoofed floods' sources: 198.19.0.0/16.
const SPOOFED: [u8; 2] = [198, 19];

#[xdp]
pub fn xdp_pass(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + IPV4_DST_AT + 2 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the bytes up to IPV4_DST_AT + 2 were bounds-checked above.
    let p = unsafe { &*(start as *const [u8; IPV4_DST_AT + 2]) };
    if p[ETHERTYPE_AT..ETHERTYPE_AT + 2] == [0x08, 0x00] && p[IPV4_DST_AT..] == SPOOFED {
        return xdp_action::XDP_DROP;
    }
    xdp_action::XDP_PASS
}

guard_reference_ebpf::program_binary!();
