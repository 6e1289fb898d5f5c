//! Source lists: the block list (every packet from a blocked source is dropped, on every port)
//! and the MX allowlist (in MX-only mode, the only sources the mx-class ports accept), and the
//! IPv4 index lookup the trusted list shares. Lists are LPM tries over source addresses; IPv4
//! lists also have an index (guard-common's `list_index`) whose lookup cost does not grow with
//! the list. An empty list is not looked up.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use guard_common::{
    INDEX_BLOCK, INDEX_MX_ALLOW, Reason, SETTING_BLOCK_V4_USED, SETTING_BLOCK_V6_USED, Settings,
    index_active_bit, index_area, index_generation_bit, v4_index_contains,
};

use crate::{
    maps::{BLOCK_V4, BLOCK_V6, MX_ALLOW_V4, MX_ALLOW_V6, V4_INDEX_16, V4_INDEX_24, V4_INDEX_32},
    parse::{bytes, src_off},
};

/// Whether the packet's source is on the block list (and its block has not expired); the list
/// of the packet's family is looked up only when it has entries (`Settings::flags`), through
/// the IPv4 index first when it has one (`Settings::index`): only an address the index holds
/// pays the trie, for its expiry. Inlined: every packet passes here, and a BPF-to-BPF call
/// would cost it ~10 ns; the flag tests come first, so an empty list costs a packet one test.
#[inline(always)]
pub fn blocked(
    ctx: &XdpContext,
    l3_off: usize,
    v6: bool,
    settings: &Settings,
) -> Result<bool, Reason> {
    let src = src_off(l3_off, v6);
    let entry = if v6 {
        if settings.flags & SETTING_BLOCK_V6_USED == 0 {
            return Ok(false);
        }
        BLOCK_V6.get(Key::new(128, *bytes::<16>(ctx, src)?))
    } else {
        if settings.flags & SETTING_BLOCK_V4_USED == 0 {
            return Ok(false);
        }
        let a = *bytes::<4>(ctx, src)?;
        if v4_indexed(INDEX_BLOCK, settings.index, a) == Some(false) {
            return Ok(false);
        }
        BLOCK_V4.get(Key::new(32, a))
    };
    Ok(match entry {
        None => false,
        Some(e) if e.expires_ns == 0 => true,
        Some(e) => crate::clock::coarse_ns() < e.expires_ns,
    })
}

/// Whether the packet's source is in the MX allowlist (`index`: `Settings::index`). A BPF
/// subprogram (not inlined): only port-25 traffic in MX-only mode pays the call, and the
/// verifier continues the caller from two outcomes instead of from every path inside.
#[inline(never)]
pub fn mx_allowed(ctx: &XdpContext, l3_off: usize, v6: bool, index: u32) -> Result<bool, Reason> {
    let src = src_off(l3_off, v6);
    Ok(if v6 {
        MX_ALLOW_V6
            .get(Key::new(128, *bytes::<16>(ctx, src)?))
            .is_some()
    } else {
        let a = *bytes::<4>(ctx, src)?;
        match v4_indexed(INDEX_MX_ALLOW, index, a) {
            Some(found) => found,
            None => MX_ALLOW_V4.get(Key::new(32, a)).is_some(),
        }
    })
}

/// Whether IPv4 `addr` is in `list` by its index (`index`: `Settings::index`), or `None` when
/// the list is not indexed and its trie decides.
#[inline(always)]
pub fn v4_indexed(list: u32, index: u32, addr: [u8; 4]) -> Option<bool> {
    if index & index_active_bit(list) == 0 {
        return None;
    }
    let generation = (index & index_generation_bit(list) != 0) as u32;
    Some(v4_index_lookup(index_area(list, generation), u32::from_be_bytes(addr)) != 0)
}

/// The index lookup, a BPF subprogram of scalars: at most three array loads, whatever the size
/// of the list; 1 when the address is in the list version of `area`.
#[inline(never)]
fn v4_index_lookup(area: u32, addr: u32) -> u32 {
    v4_index_contains(
        area,
        addr,
        |i| V4_INDEX_16.get(i).copied().unwrap_or(0),
        |i| V4_INDEX_24.get(i).copied().unwrap_or(0),
        |i| V4_INDEX_32.get(i).copied().unwrap_or(0),
    ) as u32
}
