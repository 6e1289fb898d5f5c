//! The benchmarks' floor, the cheapest XDP program there is: `cargo xtask bench` reports
//! mailguard's per-packet cost beside it, measured in the same run.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

guard_reference_ebpf::program_binary!();
