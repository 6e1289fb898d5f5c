//! Source lists: the block list (every packet from a blocked source is dropped, on every port)
//! and the MX allowlist (in MX-only mode, the only sources the mx-class ports accept). Both are
//! LPM tries over source addresses; an empty list is not looked up.

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key, programs::XdpContext,
};
use guard_common::{Reason, SETTING_BLOCK_V4_USED, SETTING_BLOCK_V6_USED, Settings};

use crate::{
    maps::{BLOCK_V4, BLOCK_V6, MX_ALLOW_V4, MX_ALLOW_V6},
    parse::{Ip, bytes},
};

/// Whether the packet's source is on the block list (and its block has not expired).
/// A BPF subprogram (not inlined): the verifier then continues the caller from two outcomes
/// instead of from every path inside.
#[inline(never)]
pub fn blocked(ctx: &XdpContext, ip: &Ip, settings: &Settings) -> Result<bool, Reason> {
    let entry = if ip.v6 {
        if !settings.has(SETTING_BLOCK_V6_USED) {
            return Ok(false);
        }
        BLOCK_V6.get(Key::new(128, *bytes::<16>(ctx, ip.src_off())?))
    } else {
        if !settings.has(SETTING_BLOCK_V4_USED) {
            return Ok(false);
        }
        BLOCK_V4.get(Key::new(32, *bytes::<4>(ctx, ip.src_off())?))
    };
    Ok(match entry {
        None => false,
        Some(e) if e.expires_ns == 0 => true,
        Some(e) => {
            // SAFETY: a helper without arguments.
            let now = unsafe { bpf_ktime_get_coarse_ns() };
            now < e.expires_ns
        }
    })
}

/// Whether the packet's source is in the MX allowlist. A BPF subprogram, as `blocked`.
#[inline(never)]
pub fn mx_allowed(ctx: &XdpContext, ip: &Ip) -> Result<bool, Reason> {
    Ok(if ip.v6 {
        MX_ALLOW_V6
            .get(Key::new(128, *bytes::<16>(ctx, ip.src_off())?))
            .is_some()
    } else {
        MX_ALLOW_V4
            .get(Key::new(32, *bytes::<4>(ctx, ip.src_off())?))
            .is_some()
    })
}
