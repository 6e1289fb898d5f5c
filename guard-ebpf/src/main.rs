//! mailguard's kernel programs. `mailguard_xdp` decides every inbound packet: the policy is in
//! `policy.rs`, header parsing in `parse.rs`, socket lookups in `sockets.rs`, the source lists
//! in `lists.rs`. A new connection to a mail port is handed (`stages.rs`) to the budget stage,
//! `mailguard_xdp_budget`: per-source budgets in `budget.rs` (their table in `sources.rs`, their
//! clock in `clock.rs`), the RST of the reject action in `reject.rs`. `mailguard_sockops`
//! (`sockops.rs`) keeps the concurrent-connection counts exact. Every map is in `maps.rs`.
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
mod sockets;
mod sockops;
mod sources;
mod stages;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use guard_common::{Reason, SETTING_MONITOR, Settings, Verdict};

use crate::maps::COUNTERS;

/// The entry program, attached to the interface: everything up to the IP header, ICMP and
/// fragments; TCP goes to the TCP stage, UDP to the UDP stage.
#[xdp]
pub fn mailguard_xdp(ctx: XdpContext) -> u32 {
    let settings = policy::settings();
    // A packet that cannot be parsed gets the verdict of the reason the parser gave.
    let reason = match policy::decide(&ctx, settings) {
        Ok(reason) | Err(reason) => reason,
    };
    pass_or_drop(reason, settings)
}

/// The TCP stage, tail-called by `mailguard_xdp` for a TCP segment.
#[xdp]
pub fn mailguard_xdp_tcp(ctx: XdpContext) -> u32 {
    let settings = policy::settings();
    let reason = match stages::handed_over(parse::IPPROTO_TCP) {
        Some((ip, _)) => match policy::tcp(&ctx, &ip, settings) {
            Ok(reason) | Err(reason) => reason,
        },
        None => Reason::StageMissing,
    };
    pass_or_drop(reason, settings)
}

/// The UDP stage, tail-called by `mailguard_xdp` for a UDP datagram.
#[xdp]
pub fn mailguard_xdp_udp(ctx: XdpContext) -> u32 {
    let settings = policy::settings();
    let reason = match stages::handed_over(parse::IPPROTO_UDP) {
        Some((ip, _)) => match policy::udp(&ctx, &ip) {
            Ok(reason) | Err(reason) => reason,
        },
        None => Reason::StageMissing,
    };
    pass_or_drop(reason, settings)
}

/// The budget stage, tail-called by `mailguard_xdp_tcp` for a bare SYN to a mail port: the only
/// one that may answer with a RST.
#[xdp]
pub fn mailguard_xdp_budget(mut ctx: XdpContext) -> u32 {
    let settings = policy::settings();
    let Some((ip, class)) = stages::handed_over(parse::IPPROTO_TCP) else {
        return pass_or_drop(Reason::StageMissing, settings);
    };
    let reason = match budget::charge(&ctx, &ip, class, settings.index) {
        Ok(reason) | Err(reason) => reason,
    };
    if reason.verdict() != Verdict::Tx || settings.has(SETTING_MONITOR) {
        return pass_or_drop(reason, settings);
    }
    count(reason);
    match reject::answer_with_rst(&mut ctx, &ip) {
        Ok(()) => xdp_action::XDP_TX,
        Err(_) => xdp_action::XDP_DROP,
    }
}

/// Counts the packet under `reason` and gives its verdict (a RST, which only the budget stage
/// sends, is a drop here). A stage that tail-called another has returned nothing: the one it
/// called counted the packet.
#[inline(always)]
fn pass_or_drop(reason: Reason, settings: &Settings) -> u32 {
    count(reason);
    match reason.verdict() {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop | Verdict::Tx => drop_unless_monitor(settings),
    }
}

/// Monitor mode counts drops and rejections but lets the packet through untouched.
#[inline(always)]
fn drop_unless_monitor(settings: &Settings) -> u32 {
    if settings.has(SETTING_MONITOR) {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
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
