//! mailguard's kernel programs. `mailguard_xdp` decides every inbound packet; the policy is in
//! `policy.rs`, header parsing in `parse.rs`, socket lookups in `sockets.rs`, maps in `maps.rs`.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod policy;
mod sockets;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use guard_common::{Reason, SETTING_MONITOR, Verdict};

use crate::maps::COUNTERS;

#[xdp]
pub fn mailguard_xdp(ctx: XdpContext) -> u32 {
    // A packet that cannot be parsed gets the verdict of the reason the parser gave.
    let reason = match policy::decide(&ctx) {
        Ok(reason) | Err(reason) => reason,
    };
    count(reason);
    match reason.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        // Monitor mode counts the drop but lets the packet through.
        Verdict::Drop if policy::settings().has(SETTING_MONITOR) => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn count(reason: Reason) {
    if let Some(counter) = COUNTERS.get_ptr_mut(reason as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU while the program runs.
        unsafe { *counter += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
