//! `mailguard_sockops`, on the cgroup v2 root: keeps the per-source count of concurrent
//! connections to mail ports exact, for XDP to read when a new SYN arrives.
//!
//! - A passive connection to a mail port is established: remember its socket (by cookie) with
//!   its source key, add one to the source's count and to its bucket's count in `SOURCES`
//!   (which tells XDP whether the count is worth looking up), ask for state callbacks, and mark
//!   the source verified (it completed a handshake): in `VERIFIED`, and in its slot when it has
//!   one, so that XDP reads the flag instead of looking the source up.
//! - A remembered socket reaches CLOSE, whoever closed it: forget it and subtract one from its
//!   count and its bucket's count. Only a
//!   socket whose entry this call removed is uncounted, so every count goes down exactly once
//!   for each time it went up, and never for a connection it did not count.
//!
//! Counts change with atomic adds. When a table is full the connection is not counted: the
//! source can then hold one more than its cap (fails open), and the event is counted.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use guard_common::{
    AccountingEvent, FEATURE_SOCKOPS_NETNS_COOKIE, PortKind, SourceKey, Transport, port_rule_index,
};

use crate::{
    features,
    maps::{BUDGET_SETTINGS, CONNECTIONS, PORT_RULES, SOCKETS, VERIFIED},
    sources::{Bucket, record},
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn mailguard_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => established(&ctx),
        // arg 1 is the new state.
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => closed(&ctx),
        _ => {}
    }
    1
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let Some(cfg) = BUDGET_SETTINGS.get(0) else {
        return;
    };
    // Without the helper (before Linux 5.15) every namespace's connections are counted.
    if cfg.netns_cookie != 0 && features::has(FEATURE_SOCKOPS_NETNS_COOKIE) {
        // SAFETY: the helper reads the program's own context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.ops as *mut c_void) };
        if netns != cfg.netns_cookie {
            return;
        }
    }
    let port = ctx.local_port() as u16;
    let Some(rule) = PORT_RULES.get(port_rule_index(Transport::Tcp, port)) else {
        return;
    };
    if rule.kind != PortKind::Mail as u8 {
        return;
    }
    let Some(key) = source_key(ctx, cfg.mask_v4, cfg.mask_v6, rule.class) else {
        return;
    };

    // Close callbacks first: a connection counted without one would never be uncounted.
    if ctx
        .set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32)
        .is_err()
    {
        record(AccountingEvent::NoCloseCallback);
        return;
    }
    // SAFETY: the helper reads the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    if SOCKETS.insert(cookie, key, BPF_NOEXIST as u64).is_err() {
        record(AccountingEvent::SocketTableFull);
        return;
    }
    let count = match CONNECTIONS.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // A concurrent insert of the same source may win: then its entry is used.
            let _ = CONNECTIONS.insert(key, 0, BPF_NOEXIST as u64);
            match CONNECTIONS.get_ptr_mut(key) {
                Some(c) => c,
                None => {
                    let _ = SOCKETS.remove(cookie);
                    record(AccountingEvent::CountTableFull);
                    return;
                }
            }
        }
    };
    add(count, 1);
    if let Some(bucket) = Bucket::of(key.slot_hash(), cfg.source_buckets) {
        bucket.connection_up();
        bucket.mark_verified(&key);
    }
    let verified = SourceKey { class: 0, ..key };
    // Only new sources are inserted: an LRU insert costs far more than a lookup.
    if VERIFIED.get_ptr(verified).is_none() {
        // SAFETY: a helper without arguments.
        let _ = VERIFIED.insert(verified, unsafe { bpf_ktime_get_ns() }, BPF_NOEXIST as u64);
    }
    record(AccountingEvent::Counted);
}

#[inline(always)]
fn closed(ctx: &SockOpsContext) {
    // SAFETY: the helper reads the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    // SAFETY: a map value pointer; the key is copied out before the entry is removed.
    let Some(key) = (unsafe { SOCKETS.get(cookie) }).copied() else {
        return;
    };
    if SOCKETS.remove(cookie).is_err() {
        return; // uncounted by someone else already
    }
    if let Some(cfg) = BUDGET_SETTINGS.get(0)
        && let Some(bucket) = Bucket::of(key.slot_hash(), cfg.source_buckets)
    {
        bucket.connection_down();
    }
    let Some(count) = CONNECTIONS.get_ptr_mut(key) else {
        return;
    };
    if guard_common::effective_count(load(count)) == 0 {
        // The count was lost to a race with the clean-up below: stay at zero.
        record(AccountingEvent::UnderflowAvoided);
        return;
    }
    add(count, u32::MAX); // minus one
    record(AccountingEvent::Uncounted);
    if load(count) == 0 {
        // Keep the table to sources with connections. A connection counted between the load
        // and the removal is lost from the count (fails open, never locks out).
        let _ = CONNECTIONS.remove(key);
    }
}

/// Atomically adds `n` (wrapping) to a count in a map value (BPF `lock xadd`).
#[inline(always)]
fn add(count: *mut u32, n: u32) {
    // SAFETY: `count` points into a map value, valid while the program runs.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(count, n) };
}

/// Reads a count (a plain load: BPF has no atomic load, and an aligned 32-bit load is whole).
#[inline(always)]
fn load(count: *mut u32) -> u32 {
    // SAFETY: as `add`.
    unsafe { core::ptr::read_volatile(count) }
}

/// The remote end's source key; IPv4-mapped IPv6 addresses (dual-stack listeners) count as
/// IPv4, as XDP sees them.
#[inline(always)]
fn source_key(
    ctx: &SockOpsContext,
    mask_v4: [u8; 4],
    mask_v6: [u8; 16],
    class: u8,
) -> Option<SourceKey> {
    match ctx.family() {
        AF_INET => Some(SourceKey::v4(
            ctx.remote_ip4().to_ne_bytes(),
            mask_v4,
            class,
        )),
        AF_INET6 => {
            let words = ctx.remote_ip6();
            let mut a = [0u8; 16];
            for i in 0..4 {
                a[4 * i..4 * i + 4].copy_from_slice(&words[i].to_ne_bytes());
            }
            let mapped = a[..10].iter().all(|&b| b == 0) && a[10] == 0xff && a[11] == 0xff;
            Some(if mapped {
                SourceKey::v4([a[12], a[13], a[14], a[15]], mask_v4, class)
            } else {
                SourceKey::v6(a, mask_v6, class)
            })
        }
        _ => None,
    }
}
