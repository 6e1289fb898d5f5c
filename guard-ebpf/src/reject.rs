//! The `reject` action: a refused SYN is rewritten in place into the RST+ACK the host's own
//! stack would send for a closed port (RFC 9293 3.10.7.1), and sent back out (XDP_TX). The
//! client fails at once instead of retrying a silently dropped SYN.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use guard_common::Reason;
use guard_ebpf::checksum::{fold, sum16};

use crate::parse::{self, Fragment, Ip, TCP_ACK, TCP_RST, bytes, bytes_mut};

const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_HDR: usize = 20;

/// Whether a RST can be made from this packet: not a fragment, and no IPv4 options or IPv6
/// extension headers (those packets are dropped instead).
#[inline(always)]
pub fn can_answer(ip: &Ip) -> bool {
    let plain = if ip.v6 { IPV6_HDR } else { IPV4_HDR };
    ip.fragment == Fragment::None && ip.l4_off == ip.l3_off + plain
}

/// Rewrites the SYN in the packet (laid out as `ip` says) into a RST+ACK back to its sender.
/// A BPF subprogram: its stack is not added to the budget's, which the kernel limits to 512
/// bytes for a whole chain of calls.
#[inline(never)]
pub fn answer_with_rst(ctx: &mut XdpContext, ip: &Ip) -> Result<(), Reason> {
    if !can_answer(ip) || ip.proto != parse::IPPROTO_TCP {
        return Err(Reason::Malformed);
    }
    if ip.v6 {
        rst::<{ IPV6_HDR + TCP_HDR }>(ctx, ip.l3_off, true)
    } else {
        rst::<{ IPV4_HDR + TCP_HDR }>(ctx, ip.l3_off, false)
    }
}

/// The rewrite, for a packet whose IP header (`N - 20` bytes, no options or extension headers)
/// starts at `l3` and is followed by the TCP header. The headers are read and written through
/// one view of `N` bytes: `l3` is a variable in the budget stage, and a view the verifier has
/// seen checked once covers every access.
#[inline(always)]
fn rst<const N: usize>(ctx: &mut XdpContext, l3: usize, v6: bool) -> Result<(), Reason> {
    let ip_len = N - TCP_HDR;
    let (seq, data_off, segment) = {
        let h = bytes::<N>(ctx, l3)?;
        let t = &h[ip_len..];
        // The RST acknowledges the SYN (one sequence number) and any data it carried.
        let segment = if v6 {
            u16::from_be_bytes([h[4], h[5]]) as u32
        } else {
            (u16::from_be_bytes([h[2], h[3]]) as u32).saturating_sub(IPV4_HDR as u32)
        };
        (
            u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
            ((t[12] >> 4) as u32) * 4,
            segment,
        )
    };
    let ack = seq
        .wrapping_add(1)
        .wrapping_add(segment.saturating_sub(data_off));

    // Keep only Ethernet (with its tags), IP and a bare TCP header.
    let end = l3 + N;
    let len = ctx.data_end() - ctx.data();
    if len > end {
        // SAFETY: shrinking the frame by the bytes past the TCP header; packet pointers are
        // derived again below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, -((len - end) as i32)) } != 0 {
            return Err(Reason::Truncated);
        }
    }

    let eth = bytes_mut::<12>(ctx, 0)?;
    let macs = *eth;
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    let h = bytes_mut::<N>(ctx, l3)?;
    let mut pseudo: u32 = TCP_HDR as u32 + parse::IPPROTO_TCP as u32;
    if v6 {
        h[4..6].copy_from_slice(&(TCP_HDR as u16).to_be_bytes());
        h[6] = parse::IPPROTO_TCP;
        h[7] = 64;
        pseudo += addresses_sum(&h[8..40])?;
        let addrs: [u8; 32] = h[8..40].try_into().unwrap_or([0; 32]);
        h[8..24].copy_from_slice(&addrs[16..]);
        h[24..40].copy_from_slice(&addrs[..16]);
    } else {
        h[2..4].copy_from_slice(&((IPV4_HDR + TCP_HDR) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        h[6..8].copy_from_slice(&[0x40, 0]); // DF
        h[8] = 64;
        h[10..12].copy_from_slice(&[0, 0]);
        pseudo += addresses_sum(&h[12..20])?;
        let addrs: [u8; 8] = h[12..20].try_into().unwrap_or([0; 8]);
        h[12..16].copy_from_slice(&addrs[4..]);
        h[16..20].copy_from_slice(&addrs[..4]);
        let c = fold(sum16(&h[..IPV4_HDR]));
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let t = &mut h[ip_len..];
    let ports: [u8; 4] = t[..4].try_into().unwrap_or([0; 4]);
    t[..2].copy_from_slice(&ports[2..]);
    t[2..4].copy_from_slice(&ports[..2]);
    t[4..8].copy_from_slice(&[0; 4]);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (TCP_HDR as u8 / 4) << 4;
    t[13] = TCP_RST | TCP_ACK;
    t[14..20].copy_from_slice(&[0; 6]); // window, checksum, urgent pointer
    let c = fold(pseudo + sum16(&t[..TCP_HDR]));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The sum of the big-endian 16-bit words of `bytes` (the pseudo-header's addresses; a multiple
/// of 4 bytes long), by the kernel's `bpf_csum_diff`: summed in the program, the 32 bytes of
/// two IPv6 addresses are all loaded into registers at once, and their spills would cost the
/// stack more than the kernel allows a chain of calls.
#[inline(always)]
pub(crate) fn addresses_sum(bytes: &[u8]) -> Result<u32, Reason> {
    // SAFETY: the helper reads `bytes.len()` bytes of the packet, which `bytes` proves present
    // (the verifier checks it too); nothing is written.
    let native = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            bytes.as_ptr() as *mut u32,
            bytes.len() as u32,
            0,
        )
    };
    if native < 0 {
        return Err(Reason::Malformed);
    }
    // The helper adds the words as the CPU loads them (little endian); a ones' complement sum of
    // byte-swapped words is the byte-swapped sum (RFC 1071, 2.(B)).
    Ok((!fold(native as u32)).swap_bytes() as u32)
}
