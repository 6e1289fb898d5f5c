//! Source lists: the block list (every packet from a blocked source is dropped, on every port)
//! and the MX allowlist (in MX-only mode, the only sources the mx-class ports accept). Both are
//! LPM tries over source addresses; an empty list is not looked up.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use guard_common::{Reason, SETTING_BLOCK_V4_USED, SETTING_BLOCK_V6_USED};

use crate::{
    maps::{BLOCK_V4, BLOCK_V6, MX_ALLOW_V4, MX_ALLOW_V6},
    parse::{bytes, src_off},
};

/// Whether the packet's source is on the block list (and its block has not expired); the trie
/// of the packet's family is looked up only when it has entries (`flags`: `Settings::flags`).
/// Inlined: every packet passes here, and a BPF-to-BPF call would cost it ~10 ns; the flag
/// tests come first, so an empty list costs a packet one test.
#[inline(always)]
pub fn blocked(ctx: &XdpContext, l3_off: usize, v6: bool, flags: u32) -> Result<bool, Reason> {
    let src = src_off(l3_off, v6);
    let entry = if v6 {
        if flags & SETTING_BLOCK_V6_USED == 0 {
            return Ok(false);
        }
        BLOCK_V6.get(Key::new(128, *bytes::<16>(ctx, src)?))
    } else {
        if flags & SETTING_BLOCK_V4_USED == 0 {
            return Ok(false);
        }
        BLOCK_V4.get(Key::new(32, *bytes::<4>(ctx, src)?))
    };
    Ok(match entry {
        None => false,
        Some(e) if e.expires_ns == 0 => true,
        Some(e) => crate::clock::coarse_ns() < e.expires_ns,
    })
}

/// Whether the packet's source is in the MX allowlist. A BPF subprogram (not inlined): only
/// port-25 traffic in MX-only mode pays the call, and the verifier continues the caller from
/// two outcomes instead of from every path inside.
#[inline(never)]
pub fn mx_allowed(ctx: &XdpContext, l3_off: usize, v6: bool) -> Result<bool, Reason> {
    let src = src_off(l3_off, v6);
    Ok(if v6 {
        MX_ALLOW_V6
            .get(Key::new(128, *bytes::<16>(ctx, src)?))
            .is_some()
    } else {
        MX_ALLOW_V4
            .get(Key::new(32, *bytes::<4>(ctx, src)?))
            .is_some()
    })
}
