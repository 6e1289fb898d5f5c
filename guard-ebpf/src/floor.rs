//! Reference programs for tests and benchmarks, never loaded by mailguard itself:
//! - `xdp_floor`, the cheapest XDP program there is: `cargo xtask bench` reports mailguard's
//!   per-packet cost beside it, measured in the same run;
//! - `xdp_pass`, for the veth ends facing the test lab's bridge: native XDP on veth delivers
//!   frames sent with XDP_TX (mailguard's RSTs) only when the peer has an XDP program too.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
