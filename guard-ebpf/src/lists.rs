//! Source lists: the block list (every packet from a blocked source is dropped, on every port)
//! and the MX allowlist (in MX-only mode, the only sources the mx-class ports accept), and the
//! index lookups the trusted list shares. Lists are LPM tries over source addresses, with an
//! index per family (guard-common's `list_index`) whose lookup cost does not grow with the
//! list; a list the index cannot hold is looked up in its trie. An empty list is not looked up.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use guard_common::{
    INDEX_BLOCK, INDEX_MX_ALLOW, Reason, SETTING_BLOCK_V4_USED, SETTING_BLOCK_V6_USED, Settings,
    index_active_bit, index_area, index_generation_bit, v4_index_contains, v6_index_contains,
    v6_list, v6_words,
};

use crate::{
    maps::{
        BLOCK_V4, BLOCK_V6, MX_ALLOW_V4, MX_ALLOW_V6, V4_INDEX_16, V4_INDEX_24, V4_INDEX_32,
        V6_LENGTHS, V6_TABLE,
    },
    parse::{bytes, src_off},
};

/// Whether the packet's source is on the block list (and its block has not expired); the list
/// of the packet's family is looked up only when it has entries (`Settings::flags`), through
/// the list's index first when it has one (`Settings::index`): only an address the index
/// holds pays the trie, for its expiry. Inlined: every packet passes here, and a BPF-to-BPF call
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
        let a = bytes::<16>(ctx, src)?;
        if v6_indexed(INDEX_BLOCK, settings.index, &v6_words(a)) == Some(false) {
            return Ok(false);
        }
        BLOCK_V6.get(Key::new(128, *a))
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

/// Whether the packet's source is in the MX allowlist (`index`: `Settings::index`). Only
/// port-25 traffic in MX-only mode asks; the lookups are BPF subprograms of scalars, so the
/// verifier continues the caller from two outcomes instead of from every path inside.
#[inline(always)]
pub fn mx_allowed(ctx: &XdpContext, l3_off: usize, v6: bool, index: u32) -> Result<bool, Reason> {
    let src = src_off(l3_off, v6);
    Ok(if v6 {
        let words = v6_words(bytes::<16>(ctx, src)?);
        mx_allowed_v6(&words, index) != 0
    } else {
        mx_allowed_v4(u32::from_be_bytes(*bytes::<4>(ctx, src)?), index) != 0
    })
}

/// 1 when IPv4 `addr` (host order) is in the MX allowlist.
#[inline(never)]
fn mx_allowed_v4(addr: u32, index: u32) -> u32 {
    let a = addr.to_be_bytes();
    (match v4_indexed(INDEX_MX_ALLOW, index, a) {
        Some(found) => found,
        None => MX_ALLOW_V4.get(Key::new(32, a)).is_some(),
    }) as u32
}

/// 1 when IPv6 `addr` (`v6_words`) is in the MX allowlist.
#[inline(never)]
fn mx_allowed_v6(addr: &[u32; 4], index: u32) -> u32 {
    (match v6_indexed(INDEX_MX_ALLOW, index, addr) {
        Some(found) => found,
        None => MX_ALLOW_V6.get(Key::new(128, v6_bytes(addr))).is_some(),
    }) as u32
}

/// `v6_words` back to the address's bytes (network order).
#[inline(always)]
fn v6_bytes(w: &[u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0..4].copy_from_slice(&w[0].to_be_bytes());
    a[4..8].copy_from_slice(&w[1].to_be_bytes());
    a[8..12].copy_from_slice(&w[2].to_be_bytes());
    a[12..16].copy_from_slice(&w[3].to_be_bytes());
    a
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

/// Whether IPv6 `addr` (`v6_words`) is in `list` by its index (`index`: `Settings::index`),
/// or `None` when the list is not indexed and its trie decides.
#[inline(always)]
pub fn v6_indexed(list: u32, index: u32, addr: &[u32; 4]) -> Option<bool> {
    let bits = v6_list(list);
    if index & index_active_bit(bits) == 0 {
        return None;
    }
    let generation = (index & index_generation_bit(bits) != 0) as u32;
    let [a0, a1, a2, a3] = *addr;
    Some(v6_index_lookup(index_area(list, generation), a0, a1, a2, a3) != 0)
}

/// The IPv6 index lookup, a BPF subprogram of scalars (the address as `v6_words`): the length
/// table of `area`, then the two buckets of the masked address for each length in it (at most
/// `V6_INDEX_LENGTHS`); 1 when the address is in the list version of `area`.
#[inline(never)]
fn v6_index_lookup(area: u32, a0: u32, a1: u32, a2: u32, a3: u32) -> u32 {
    let Some(table) = V6_LENGTHS.get(area) else {
        return 0;
    };
    let (list, addr) = (area / 2, [a0, a1, a2, a3]);
    v6_index_contains(list, table, &addr, |bucket, tag, masked| {
        V6_TABLE.get(bucket).is_some_and(|b| b.holds(tag, masked))
    }) as u32
}
