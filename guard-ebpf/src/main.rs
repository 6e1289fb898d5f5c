//! mailguard's kernel programs. `mailguard_xdp` decides every inbound packet; the policy is in
//! `policy.rs`, header parsing in `parse.rs`, socket lookups in `sockets.rs`, maps in `maps.rs`.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod policy;
mod sockets;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use guard_common::{Reason, SETTING_MONITOR, Settings};

use crate::maps::{COUNTERS, SETTINGS};

/// Used when the settings entry cannot be read (it always can: it is an array slot): enforce,
/// and let ping through.
const FALLBACK_SETTINGS: Settings = Settings {
    flags: guard_common::SETTING_ECHO_ALLOW,
    reserved: [0; 3],
};

#[xdp]
pub fn mailguard_xdp(ctx: XdpContext) -> u32 {
    let settings = match SETTINGS.get(0) {
        Some(s) => s,
        None => &FALLBACK_SETTINGS,
    };
    // A packet that cannot be parsed gets the verdict of the reason the parser gave.
    let reason = match policy::decide(&ctx, settings) {
        Ok(reason) | Err(reason) => reason,
    };
    count(reason);
    if settings.has(SETTING_MONITOR) {
        xdp_action::XDP_PASS
    } else {
        reason.verdict() as u32
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
