//! The `reject` action: a refused SYN is rewritten in place into the RST+ACK the host's own
//! stack would send for a closed port (RFC 9293 3.10.7.1), and sent back out (XDP_TX). The
//! client fails at once instead of retrying a silently dropped SYN.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_tail, programs::XdpContext};
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

/// Rewrites the SYN in the packet into a RST+ACK back to its sender.
#[inline(always)]
pub fn answer_with_rst(ctx: &mut XdpContext) -> Result<(), Reason> {
    let (ethertype, l3) = parse::ethernet(ctx)?;
    let ip = match ethertype {
        parse::ETH_P_IPV4 => parse::ipv4(ctx, l3)?,
        parse::ETH_P_IPV6 => parse::ipv6(ctx, l3)?,
        _ => return Err(Reason::Malformed),
    };
    if !can_answer(&ip) || ip.proto != parse::IPPROTO_TCP {
        return Err(Reason::Malformed);
    }
    let (sport, dport, seq, data_off) = {
        let t = parse::tcp(ctx, ip.l4_off)?;
        let h = bytes::<20>(ctx, ip.l4_off)?;
        (
            t.sport(),
            t.dport(),
            u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            ((h[12] >> 4) as u32) * 4,
        )
    };
    // The RST acknowledges the SYN (one sequence number) and any data it carried.
    let segment = if ip.v6 {
        parse::be16(ctx, l3 + 4)? as u32
    } else {
        (parse::be16(ctx, l3 + 2)? as u32).saturating_sub(IPV4_HDR as u32)
    };
    let ack = seq
        .wrapping_add(1)
        .wrapping_add(segment.saturating_sub(data_off));

    // Keep only Ethernet (with its tags), IP and a bare TCP header.
    let end = ip.l4_off + TCP_HDR;
    let len = ctx.data_end() - ctx.data();
    if len > end {
        // SAFETY: shrinking the frame by the bytes past the TCP header; packet pointers are
        // derived again below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, -((len - end) as i32)) } != 0 {
            return Err(Reason::Truncated);
        }
    }

    let eth = bytes_mut::<12>(ctx, 0)?;
    for i in 0..6 {
        eth.swap(i, i + 6);
    }
    let mut pseudo: u32 = TCP_HDR as u32 + parse::IPPROTO_TCP as u32;
    if ip.v6 {
        let h = bytes_mut::<40>(ctx, l3)?;
        h[4..6].copy_from_slice(&(TCP_HDR as u16).to_be_bytes());
        h[6] = parse::IPPROTO_TCP;
        h[7] = 64;
        for i in 8..24 {
            h.swap(i, i + 16);
        }
        pseudo += sum16(&h[8..40]);
    } else {
        let h = bytes_mut::<20>(ctx, l3)?;
        h[2..4].copy_from_slice(&((IPV4_HDR + TCP_HDR) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        h[6..8].copy_from_slice(&[0x40, 0]); // DF
        h[8] = 64;
        h[10..12].copy_from_slice(&[0, 0]);
        for i in 12..16 {
            h.swap(i, i + 4);
        }
        let c = fold(sum16(&h[..]));
        h[10..12].copy_from_slice(&c.to_be_bytes());
        pseudo += sum16(&h[12..20]);
    }
    let t = bytes_mut::<20>(ctx, ip.l4_off)?;
    t[0..2].copy_from_slice(&dport);
    t[2..4].copy_from_slice(&sport);
    t[4..8].copy_from_slice(&[0; 4]);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = (TCP_HDR as u8 / 4) << 4;
    t[13] = TCP_RST | TCP_ACK;
    t[14..20].copy_from_slice(&[0; 6]); // window, checksum, urgent pointer
    let c = fold(pseudo + sum16(&t[..]));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    Ok(())
}
