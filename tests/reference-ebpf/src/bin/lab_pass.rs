//! XDP_PASS, for the veth ends facing the test lab's bridge: native XDP on veth delivers
//! frames sent with XDP_TX (mailguard's RSTs) only when the peer has an XDP program too.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

guard_reference_ebpf::program_binary!();
