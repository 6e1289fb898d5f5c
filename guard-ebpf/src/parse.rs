//! Header parsers. Each parses one header at a given offset and returns what the policy needs
//! and where the next header starts, or the `Reason` a packet that cannot be parsed is counted
//! under. Every packet read goes through `ptr_at`, the one bounds-checked accessor.

use core::mem;

use aya_ebpf::programs::XdpContext;
use guard_common::Reason;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers the parser walks before giving up (RFC 8200 allows any number;
/// real traffic carries at most a few).
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// The largest offset the IP header can have: after Ethernet and two VLAN tags.
pub const MAX_L3_OFF: usize = ETH_HDR_LEN + 2 * VLAN_HDR_LEN;

/// The largest offset the upper-layer header can have: two VLAN tags, the IPv6 header and
/// `MAX_IPV6_EXT_HEADERS` extension headers of the largest size (2048 bytes) fit below it.
/// Offsets handed between programs are checked against it, which also tells the verifier
/// their bound.
pub const MAX_L4_OFF: usize = 0x3fff;
const _: () = assert!(MAX_L3_OFF + 40 + MAX_IPV6_EXT_HEADERS * 2048 <= MAX_L4_OFF);

/// Returns a pointer to a `T` at `offset` bytes into the packet, or `Truncated` when the packet
/// is shorter than `offset + size_of::<T>()`.
///
/// # SAFETY
/// The returned pointer is in bounds of the packet for `size_of::<T>()` bytes, which is what
/// the verifier checks too. Callers view it as a byte array (`bytes`), which has no alignment
/// requirement, and never keep it beyond the program run.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, Reason> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return Err(Reason::Truncated);
    }
    Ok((start + offset) as *const T)
}

/// A view of `N` bytes at `offset`, bounds-checked: only the bytes the caller indexes are
/// loaded from the packet.
#[inline(always)]
pub fn bytes<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<&[u8; N], Reason> {
    let p = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: ptr_at proved the N bytes lie inside the packet, which stays valid while the
    // program runs (the borrow of `ctx`); a byte array has no alignment requirement.
    Ok(unsafe { &*p })
}

/// A writable view of `N` bytes at `offset`, bounds-checked (for the `reject` rewrite).
#[inline(always)]
pub fn bytes_mut<const N: usize>(
    ctx: &mut XdpContext,
    offset: usize,
) -> Result<&mut [u8; N], Reason> {
    let p = ptr_at::<[u8; N]>(ctx, offset)? as *mut [u8; N];
    // SAFETY: as `bytes`; XDP packet data is writable, and the `&mut` borrow of `ctx` makes
    // this the only view while it lives.
    Ok(unsafe { &mut *p })
}

/// A big-endian `u16` at `offset`, bounds-checked.
#[inline(always)]
pub fn be16(ctx: &XdpContext, offset: usize) -> Result<u16, Reason> {
    let b = bytes::<2>(ctx, offset)?;
    Ok(u16::from_be_bytes(*b))
}

/// The Ethernet header and up to two VLAN tags (802.1Q / 802.1ad): returns the EtherType of
/// the payload and its offset.
#[inline(always)]
pub fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), Reason> {
    let mut proto = be16(ctx, 12)?;
    let mut off = ETH_HDR_LEN;
    // Unrolled: a tag's EtherType field is the last two bytes of the tag.
    if is_vlan(proto) {
        proto = be16(ctx, off + 2)?;
        off += VLAN_HDR_LEN;
        if is_vlan(proto) {
            proto = be16(ctx, off + 2)?;
            off += VLAN_HDR_LEN;
            if is_vlan(proto) {
                return Err(Reason::VlanTooDeep);
            }
        }
    }
    Ok((proto, off))
}

#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q || proto == ETH_P_8021AD
}

/// Where a packet stands with respect to IP fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (an IPv6 atomic fragment counts as not fragmented).
    None,
    /// Offset 0 with more fragments to come: the transport header is here.
    First,
    /// Offset > 0: no transport header.
    Later,
}

/// What the policy needs from the IP layer. Addresses are not copied: they are read from
/// `l3_off` only on the paths that need them.
#[derive(Clone, Copy)]
pub struct Ip {
    pub v6: bool,
    /// Offset of the IPv4/IPv6 header.
    pub l3_off: usize,
    /// Upper-layer protocol (after IPv6 extension headers).
    pub proto: u8,
    /// Offset of the upper-layer header.
    pub l4_off: usize,
    pub fragment: Fragment,
}

/// Offsets of the source addresses within each IP header.
pub const IPV4_SRC: usize = 12;
pub const IPV6_SRC: usize = 8;
/// Offset of the next-header field (the hop limit follows it) within the fixed IPv6 header.
pub const IPV6_NEXT_HEADER: usize = 6;

/// The IP header starts within the first 22 bytes (Ethernet and two VLAN tags): a mask that
/// keeps every such offset, and tells the verifier the bound in subprograms, where it no longer
/// follows the caller's exact value.
pub const L3_OFF_MASK: usize = 0x1f;

impl Ip {
    /// Offset of the source address.
    #[inline(always)]
    pub fn src_off(&self) -> usize {
        src_off(self.l3_off, self.v6)
    }
}

/// Offset of the source address of the IP header at `l3_off` (for subprograms, which take
/// scalars rather than a pointer to an `Ip` that would then have to live on the stack).
#[inline(always)]
pub fn src_off(l3_off: usize, v6: bool) -> usize {
    (l3_off & L3_OFF_MASK) + if v6 { IPV6_SRC } else { IPV4_SRC }
}

/// The IPv4 header, options included (IHL honoured).
#[inline(always)]
pub fn ipv4(ctx: &XdpContext, off: usize) -> Result<Ip, Reason> {
    let h = bytes::<20>(ctx, off)?;
    let l4_off = if h[0] == 0x45 {
        // Version 4 without options: nearly every packet.
        off + 20
    } else {
        if h[0] >> 4 != 4 {
            return Err(Reason::Malformed);
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return Err(Reason::Malformed);
        }
        // The options must be inside the packet too.
        bytes::<1>(ctx, off + ihl - 1)?;
        off + ihl
    };
    // Flags and fragment offset: bytes 6-7 are [0, DF, MF, offset(13 bits)].
    let fragment = if (h[6] & 0x1f) | h[7] != 0 {
        Fragment::Later
    } else if h[6] & 0x20 != 0 {
        Fragment::First
    } else {
        Fragment::None
    };
    Ok(Ip {
        v6: false,
        l3_off: off,
        proto: h[9],
        l4_off,
        fragment,
    })
}

pub const IPV6_HDR_LEN: usize = 40;
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;
const NEXTHDR_MOBILITY: u8 = 135;
const NEXTHDR_HIP: u8 = 139;
const NEXTHDR_SHIM6: u8 = 140;

/// The IPv6 header and its extension headers (at most `MAX_IPV6_EXT_HEADERS`).
#[inline(always)]
pub fn ipv6(ctx: &XdpContext, off: usize) -> Result<Ip, Reason> {
    let h = bytes::<8>(ctx, off)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    // The addresses must be present even on paths that do not read them.
    bytes::<1>(ctx, off + IPV6_HDR_LEN - 1)?;
    let mut next = h[IPV6_NEXT_HEADER];
    let mut l4_off = off + IPV6_HDR_LEN;
    let mut fragment = Fragment::None;
    // One pass per extension header, plus one to reach the upper-layer header.
    for _ in 0..MAX_IPV6_EXT_HEADERS + 1 {
        match next {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_MOBILITY | NEXTHDR_HIP
            | NEXTHDR_SHIM6 => {
                // Next header, then length in 8-octet units not counting the first 8.
                let e = bytes::<2>(ctx, l4_off)?;
                next = e[0];
                l4_off += (e[1] as usize + 1) * 8;
            }
            NEXTHDR_AUTH => {
                // Length in 4-octet units minus 2 (RFC 4302).
                let e = bytes::<2>(ctx, l4_off)?;
                next = e[0];
                l4_off += (e[1] as usize + 2) * 4;
            }
            NEXTHDR_FRAGMENT => {
                let f = bytes::<4>(ctx, l4_off)?;
                next = f[0];
                l4_off += 8;
                let offset_flags = u16::from_be_bytes([f[2], f[3]]);
                if offset_flags & 0xfff8 != 0 {
                    // A later fragment: what follows is payload, not headers.
                    return Ok(Ip {
                        v6: true,
                        l3_off: off,
                        proto: next,
                        l4_off,
                        fragment: Fragment::Later,
                    });
                }
                if offset_flags & 1 != 0 {
                    fragment = Fragment::First;
                }
            }
            _ => {
                return Ok(Ip {
                    v6: true,
                    l3_off: off,
                    proto: next,
                    l4_off,
                    fragment,
                });
            }
        }
    }
    Err(Reason::Ipv6ExtTooDeep)
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// A TCP header, read field by field where the policy needs it. Ports are as on the wire
/// (network byte order).
#[derive(Clone, Copy)]
pub struct Tcp<'a> {
    h: &'a [u8; 20],
}

impl Tcp<'_> {
    #[inline(always)]
    pub fn sport(&self) -> [u8; 2] {
        [self.h[0], self.h[1]]
    }

    #[inline(always)]
    pub fn dport(&self) -> [u8; 2] {
        [self.h[2], self.h[3]]
    }

    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.h[13]
    }
}

/// The TCP header (the fixed 20 bytes; options are not needed).
#[inline(always)]
pub fn tcp(ctx: &XdpContext, off: usize) -> Result<Tcp<'_>, Reason> {
    let h = bytes::<20>(ctx, off)?;
    if h[12] >> 4 < 5 {
        return Err(Reason::Malformed);
    }
    Ok(Tcp { h })
}

/// Source and destination port of a UDP header, network byte order.
#[inline(always)]
pub fn udp(ctx: &XdpContext, off: usize) -> Result<([u8; 2], [u8; 2]), Reason> {
    let h = bytes::<8>(ctx, off)?;
    Ok(([h[0], h[1]], [h[2], h[3]]))
}

/// Type and code of an ICMP or ICMPv6 header (8 bytes: type, code, checksum, 4 more).
#[inline(always)]
pub fn icmp(ctx: &XdpContext, off: usize) -> Result<(u8, u8), Reason> {
    let h = bytes::<8>(ctx, off)?;
    Ok((h[0], h[1]))
}
