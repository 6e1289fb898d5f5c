//! mailguard's kernel programs. `mailguard_xdp` decides every inbound packet: the policy is in
//! `policy.rs`, per-source budgets in `budget.rs` (their table in `sources.rs`, their clock in
//! `clock.rs`), the RST of the reject action in `reject.rs`, header parsing in `parse.rs`,
//! socket lookups in `sockets.rs`, the source lists in `lists.rs`, the settle points that keep
//! the verifier's work small in `settle.rs`, the kernel features it may do without in
//! `features.rs`. `mailguard_sockops` (`sockops.rs`) keeps the concurrent-connection counts
//! exact. Every map is in `maps.rs`.
#![no_std]
#![no_main]
// Atomic adds on map values (sock_ops counts): core has no atomic types for the BPF target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod budget;
mod clock;
mod features;
mod lists;
mod maps;
mod parse;
mod policy;
mod reject;
mod settle;
mod sockets;
mod sockops;
mod sources;
mod syncookie;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use guard_common::{Reason, SETTING_MONITOR, Verdict};

use crate::maps::COUNTERS;

#[xdp]
pub fn mailguard_xdp(mut ctx: XdpContext) -> u32 {
    let settings = policy::settings();
    let slot = match settle::Slot::of_this_cpu() {
        Ok(slot) => slot,
        Err(reason) => {
            count(reason);
            return xdp_action::XDP_PASS;
        }
    };
    let mut reason = policy::decide(&ctx, settings, slot);
    let monitor = settings.has(SETTING_MONITOR);
    // A SYN answered with a cookie is rewritten before it is counted: when no cookie can be
    // made it is dropped, as over the SYN ceiling, and counted so. Its layout, as a refused
    // SYN's, is the one the budget's settle point left.
    if reason == Reason::SynCookie
        && !monitor
        && syncookie::answer_with_cookie(&mut ctx, &slot.last(), settings).is_err()
    {
        reason = Reason::SynCookieUnavailable;
    }
    count(reason);
    match reason.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        // Monitor mode counts drops and answers but lets the packet through untouched.
        Verdict::Drop | Verdict::Tx if monitor => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Tx if reason == Reason::SynCookie => xdp_action::XDP_TX,
        // A SYN the budget refused with action reject answers with a RST.
        Verdict::Tx => match reject::answer_with_rst(&mut ctx, &slot.last()) {
            Ok(()) => xdp_action::XDP_TX,
            Err(_) => xdp_action::XDP_DROP,
        },
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
