//! SYN cookies answered in XDP (`syn_cookies`): a SYN to a mail port from a source not known to
//! have completed a connection is rewritten in place into the SYN-ACK the host's own stack
//! would send with a SYN cookie, and sent back out (XDP_TX). The cookie is the kernel's own,
//! with the kernel's secret, so the source's ACK, which passes to the kernel like any segment
//! of a mail connection, is validated by the kernel, which then creates the connection;
//! sock_ops marks the source verified when it is established. Nothing is kept for a source
//! that never answers: a spoofed flood costs no table entry, and no SYN of it reaches the
//! listener.
//!
//! The cookie comes from one of two helpers:
//! - `bpf_tcp_raw_gen_syncookie_ipv4/ipv6` (Linux 6.0, `FEATURE_RAW_SYN_COOKIE`): from the
//!   SYN's headers alone. The kernel accepts the returning ACK only on a listener that sent a
//!   cookie itself in the last two minutes, so XDP answers only on ports whose listeners the
//!   daemon has made do so (`COOKIE_PORTS`, `daemon::cookie_marks`), and the kernel's setting
//!   `net.ipv4.tcp_syncookies` keeps the operator's value: known clients keep the SYN queue.
//! - `bpf_tcp_gen_syncookie` on the listener a socket lookup finds (older kernels): it makes a
//!   cookie only while `net.ipv4.tcp_syncookies` is 2, which the daemon sets while cookies are
//!   needed.
//!
//! A SYN without options (what flood tools send) gets its cookie from the SYN alone made on
//! the packet's own headers; a SYN with options is copied first into `COOKIE_SCAN`, as the
//! helpers read its options, whose length the verifier cannot bound in the packet.
//!
//! The SYN-ACK's options are those the kernel's cookie check can decode: the MSS, and when the
//! SYN carried timestamps (and `COOKIES_TIMESTAMPS` allows them), timestamps whose TSval holds
//! the window scale and SACK permission in its low six bits as the kernel encodes them
//! (`cookie_init_timestamp`), with SACK and window scale offered as the SYN asked. Without
//! timestamps the connection has neither (the kernel's own cookies behave the same). A SYN
//! without options (what flood tools send) is answered without options: its frame may have no
//! room to grow.

use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::{
        bpf_ktime_get_ns,
        generated::{
            bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
        },
    },
    programs::XdpContext,
};
use guard_common::{
    COOKIE_WSCALE_SHIFT, COOKIES_TIMESTAMPS, FEATURE_RAW_SYN_COOKIE, Reason, Settings,
};
use guard_ebpf::checksum::{fold, sum16};

use crate::{
    clock, features,
    maps::{COOKIE_PORTS, COOKIE_SCAN},
    parse::{self, Ip, TCP_ACK, TCP_SYN, bytes, bytes_mut},
    reject::{addresses_sum, can_answer},
    sockets,
};

const IPV4_HDR: usize = 20;
const IPV6_HDR: usize = 40;
const TCP_HDR: usize = 20;
/// The SYN-ACK's options: the MSS (4 bytes), then for timestamps 16 more (SACK permitted or two
/// NOPs, the timestamps, a NOP and the window scale; end-of-options padding where one is left
/// out).
const MSS_OPTION: usize = 4;
const TS_OPTIONS: usize = 20;

const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_MSS: u8 = 2;
const OPT_WSCALE: u8 = 3;
const OPT_SACK_PERM: u8 = 4;
const OPT_TIMESTAMP: u8 = 8;

/// The kernel's encoding of options in a cookie's TSval (include/net/tcp.h).
const TS_OPT_WSCALE_MASK: u32 = 0xf;
const TS_OPT_SACK: u32 = 1 << 4;
const TSBITS: u32 = 6;
const TCP_MAX_WSCALE: u8 = 14;

/// The SYN's headers and what its options offered, worked on in a per-CPU map value
/// (`COOKIE_SCAN`) rather than on the stack: the kernel limits the stack of the program and
/// this subprogram together to 512 bytes, and the verifier, which does not follow values in
/// map memory, sees every turn of the options loop alike and checks it once.
#[repr(C)]
pub struct CookieScan {
    /// The SYN's TCP header with its options (64 bytes, so that every index masked with 63 is
    /// in it: the kernel's helper reads its data offset's worth).
    pub th: [u8; 64],
    /// The SYN's IP header (20 or 40 bytes).
    pub iph: [u8; 40],
    /// Where the options loop is in `th`.
    pub at: u32,
    /// The window scale the SYN offered; `NO_WSCALE` when none.
    pub wscale: u32,
    /// `OFFER_*` bits.
    pub offer: u32,
    /// The SYN's TSval (with `OFFER_TIMESTAMPS`).
    pub tsval: u32,
}

const NO_WSCALE: u32 = 0xff;
const OFFER_SACK: u32 = 1;
const OFFER_TIMESTAMPS: u32 = 2;

/// Rewrites the SYN in the packet (laid out as `ip` says) into a SYN-ACK carrying the kernel's
/// cookie. A BPF subprogram, as `answer_with_rst`. `Err` when no cookie can be made: IP options
/// or extension headers, no listener, the kernel not making cookies.
#[inline(never)]
pub fn answer_with_cookie(
    ctx: &mut XdpContext,
    ip: &Ip,
    settings: &Settings,
) -> Result<(), Reason> {
    if !can_answer(ip) || ip.proto != parse::IPPROTO_TCP {
        return Err(Reason::SynCookieUnavailable);
    }
    let cookies = settings.cookies;
    let mss = settings.cookie_mss;
    if ip.v6 {
        synack::<{ IPV6_HDR + TCP_HDR }>(ctx, ip, cookies, (mss >> 16) as u16)
    } else {
        synack::<{ IPV4_HDR + TCP_HDR }>(ctx, ip, cookies, mss as u16)
    }
}

/// Reads the SYN's options from `scan.th` (`th_len` bytes) into `scan`.
#[inline(always)]
fn scan_options(scan: *mut CookieScan, th_len: usize) {
    // SAFETY: `scan` is this CPU's map value, used by nothing else while the program runs.
    unsafe {
        use core::ptr::write_volatile;
        write_volatile(&mut (*scan).at, 20);
        write_volatile(&mut (*scan).wscale, NO_WSCALE);
        write_volatile(&mut (*scan).offer, 0);
        write_volatile(&mut (*scan).tsval, 0);
    }
    // Each turn consumes at least one byte of at most 40.
    for _ in 0..40 {
        if option_step(scan, th_len) {
            break;
        }
    }
}

/// One turn of the options loop: reads the option at `scan.at` into `scan` and moves past it;
/// true at the end of the options. A BPF subprogram: what a turn leaves in registers ends with
/// it, so the verifier finds the loop's state alike after every kind of option and checks each
/// turn once.
#[inline(never)]
fn option_step(scan: *mut CookieScan, th_len: usize) -> bool {
    use core::ptr::{read_volatile, write_volatile};
    // SAFETY: `scan` is this CPU's map value, used by nothing else while the program runs.
    let i = unsafe { read_volatile(&(*scan).at) } as usize;
    if i >= th_len || i >= 59 {
        return true;
    }
    // SAFETY: as above.
    let th = unsafe { &(*scan).th };
    let kind = th[i & 63];
    if kind == OPT_EOL {
        return true;
    }
    let len = if kind == OPT_NOP {
        1
    } else {
        th[(i + 1) & 63] as usize
    };
    if len == 0 || (kind != OPT_NOP && len < 2) || i + len > th_len {
        return true;
    }
    // SAFETY: as above.
    unsafe {
        match (kind, len) {
            (OPT_WSCALE, 3) => write_volatile(
                &mut (*scan).wscale,
                th[(i + 2) & 63].min(TCP_MAX_WSCALE) as u32,
            ),
            (OPT_SACK_PERM, 2) => write_volatile(
                &mut (*scan).offer,
                read_volatile(&(*scan).offer) | OFFER_SACK,
            ),
            (OPT_TIMESTAMP, 10) => {
                write_volatile(
                    &mut (*scan).offer,
                    read_volatile(&(*scan).offer) | OFFER_TIMESTAMPS,
                );
                write_volatile(
                    &mut (*scan).tsval,
                    u32::from_be_bytes([
                        th[(i + 2) & 63],
                        th[(i + 3) & 63],
                        th[(i + 4) & 63],
                        th[(i + 5) & 63],
                    ]),
                );
            }
            _ => {}
        }
        write_volatile(&mut (*scan).at, (i + len) as u32);
    }
    false
}

/// The cookie's TSval: the kernel's millisecond clock with the low six bits holding the window
/// scale the SYN offered (15: none) and SACK permission, never ahead of the clock (as
/// `cookie_init_timestamp`).
#[inline(always)]
fn cookie_tsval(wscale: u32, sack: bool) -> u32 {
    // SAFETY: a helper without arguments.
    let now = (unsafe { bpf_ktime_get_ns() } / 1_000_000) as u32;
    let mut options = if wscale == NO_WSCALE {
        TS_OPT_WSCALE_MASK
    } else {
        wscale & TS_OPT_WSCALE_MASK
    };
    if sack {
        options |= TS_OPT_SACK;
    }
    let ts = (now >> TSBITS << TSBITS) | options;
    if ts > now {
        ts.wrapping_sub(1 << TSBITS)
    } else {
        ts
    }
}

/// What the SYN-ACK answers with, besides the SYN's addresses and ports swapped.
struct Reply {
    cookie: u32,
    /// The SYN's sequence number; the SYN-ACK acknowledges the next.
    seq: u32,
    /// The options: none, `MSS_OPTION` or `TS_OPTIONS`.
    opts: usize,
    /// With timestamps: the SYN's TSval (echoed), the window scale it offered (`NO_WSCALE`:
    /// none) and whether it offered SACK.
    tsecr: u32,
    wscale: u32,
    sack: bool,
}

/// The answer for a packet whose IP header (`N - TCP_HDR` bytes, no options or extension
/// headers) starts at `ip.l3_off`: the cookie, then the rewrite. `mss`: the MSS the SYN-ACK
/// offers.
#[inline(always)]
fn synack<const N: usize>(
    ctx: &mut XdpContext,
    ip: &Ip,
    cookies: u32,
    mss: u16,
) -> Result<(), Reason> {
    const { assert!(N == IPV4_HDR + TCP_HDR || N == IPV6_HDR + TCP_HDR) };
    let ip_len = N - TCP_HDR;
    let l3 = ip.l3_off & parse::L3_OFF_MASK;
    let h = bytes_mut::<N>(ctx, l3)?;
    let t = &h[ip_len..];
    let th_len = ((t[12] >> 4) as usize * 4).min(60);
    if th_len < 20 || t[13] & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Err(Reason::Malformed);
    }
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let reply = if th_len == TCP_HDR && features::has(FEATURE_RAW_SYN_COOKIE) {
        // A SYN without options, what floods send: the cookie is made on the packet's own
        // headers, nothing copied, and the SYN-ACK carries no options either.
        let cookie = bare_cookie(h).ok_or(Reason::SynCookieUnavailable)?;
        Reply {
            cookie,
            seq,
            opts: 0,
            tsecr: 0,
            wscale: NO_WSCALE,
            sack: false,
        }
    } else {
        with_options::<N>(ctx, l3, ip, cookies, seq)?
    };
    rewrite::<N>(ctx, l3, reply, cookies, mss)
}

/// The cookie for a SYN that may carry options, made on copies of its headers in `COOKIE_SCAN`
/// (the helpers read the options, whose length the verifier cannot bound in the packet), and
/// the options the SYN-ACK answers them with.
#[inline(always)]
fn with_options<const N: usize>(
    ctx: &XdpContext,
    l3: usize,
    ip: &Ip,
    cookies: u32,
    seq: u32,
) -> Result<Reply, Reason> {
    let ip_len = N - TCP_HDR;
    let l4 = l3 + ip_len;
    let scan = COOKIE_SCAN
        .get_ptr_mut(0)
        .ok_or(Reason::SynCookieUnavailable)?;
    // SAFETY: this CPU's map value, used by nothing else while the program runs.
    let (iph, th) = unsafe { (&mut (*scan).iph, &mut (*scan).th) };
    if ip_len == IPV6_HDR {
        iph.copy_from_slice(bytes::<IPV6_HDR>(ctx, l3)?);
    } else {
        iph[..IPV4_HDR].copy_from_slice(bytes::<IPV4_HDR>(ctx, l3)?);
    }
    th[..20].copy_from_slice(bytes::<20>(ctx, l4)?);
    let th_len = ((th[12] >> 4) as usize * 4).min(60);
    let mut off = 20;
    for _ in 0..10 {
        if off + 4 > th_len {
            break;
        }
        let word = bytes::<4>(ctx, l4 + off)?;
        for (k, b) in word.iter().enumerate() {
            th[(off + k) & 63] = *b;
        }
        off += 4;
    }
    let cookie = if features::has(FEATURE_RAW_SYN_COOKIE) {
        raw_cookie(iph, ip_len == IPV6_HDR, th, th_len as u32)
    } else {
        sockets::syn_cookie(ctx, ip, iph, ip_len as u32, th, th_len as u32)?.map(|(c, _)| c)
    };
    let Some(cookie) = cookie else {
        return Err(Reason::SynCookieUnavailable);
    };
    let (timestamps, tsecr, wscale, sack) = if cookies & COOKIES_TIMESTAMPS != 0 {
        scan_options(scan, th_len);
        // SAFETY: as above.
        unsafe {
            (
                (*scan).offer & OFFER_TIMESTAMPS != 0,
                (*scan).tsval,
                (*scan).wscale,
                (*scan).offer & OFFER_SACK != 0,
            )
        }
    } else {
        (false, 0, NO_WSCALE, false)
    };
    // The SYN-ACK's options: the MSS, with the timestamps block when the SYN's timestamps are
    // answered; none for a SYN without options (floods send those, a real client sends its
    // MSS), whose frame may have no room to grow.
    let opts = if th_len == TCP_HDR {
        0
    } else if timestamps {
        TS_OPTIONS
    } else {
        MSS_OPTION
    };
    Ok(Reply {
        cookie,
        seq,
        opts,
        tsecr,
        wscale,
        sack,
    })
}

/// Rewrites the SYN (IP header at `l3`, `N - TCP_HDR` bytes) into the SYN-ACK `reply` says.
/// The frame becomes Ethernet (with its tags), IP and the SYN-ACK's TCP header; where it
/// cannot grow that far, timestamps are left out. The checksums are summed from the values
/// written, not read back.
#[inline(always)]
fn rewrite<const N: usize>(
    ctx: &mut XdpContext,
    l3: usize,
    reply: Reply,
    cookies: u32,
    mss: u16,
) -> Result<(), Reason> {
    let ip_len = N - TCP_HDR;
    let l4 = l3 + ip_len;
    let mut opts = reply.opts;
    if !resize(ctx, l4 + TCP_HDR + opts) {
        if opts != TS_OPTIONS || !resize(ctx, l4 + TCP_HDR + MSS_OPTION) {
            return Err(Reason::SynCookieUnavailable);
        }
        opts = MSS_OPTION;
    }
    let tcp_len = TCP_HDR + opts;
    // Swapped in place, byte by byte: copies would cost the stack, which the kernel limits to
    // 512 bytes for the program and this subprogram together.
    let eth = bytes_mut::<12>(ctx, 0)?;
    for k in 0..6 {
        eth.swap(k, 6 + k);
    }

    let h = bytes_mut::<N>(ctx, l3)?;
    // The pseudo-header's and the IPv4 header's addresses: their sum does not change with
    // their order.
    let addresses = if ip_len == IPV6_HDR {
        addresses_sum(&h[8..40])?
    } else {
        addresses_sum(&h[12..20])?
    };
    if ip_len == IPV6_HDR {
        h[..4].copy_from_slice(&[0x60, 0, 0, 0]);
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        h[6] = parse::IPPROTO_TCP;
        h[7] = 64;
        for k in 0..16 {
            h.swap(8 + k, 24 + k);
        }
    } else {
        let total = (IPV4_HDR + tcp_len) as u16;
        h[..2].copy_from_slice(&[0x45, 0]);
        h[2..4].copy_from_slice(&total.to_be_bytes());
        h[4..6].copy_from_slice(&[0, 0]);
        h[6..8].copy_from_slice(&[0x40, 0]); // DF
        h[8] = 64;
        h[9] = parse::IPPROTO_TCP;
        for k in 0..4 {
            h.swap(12 + k, 16 + k);
        }
        // Version and header length, total length, no identification, DF, TTL 64 and TCP.
        let sum = 0x4500 + total as u32 + 0x4000 + (64 << 8 | parse::IPPROTO_TCP as u32);
        h[10..12].copy_from_slice(&fold(sum + addresses).to_be_bytes());
    }
    let t = &mut h[ip_len..];
    let ports = u16::from_be_bytes([t[0], t[1]]) as u32 + u16::from_be_bytes([t[2], t[3]]) as u32;
    t.swap(0, 2);
    t.swap(1, 3);
    let ack = reply.seq.wrapping_add(1);
    t[4..8].copy_from_slice(&reply.cookie.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    let offset_flags = (((tcp_len / 4) as u16) << 12) | (TCP_SYN | TCP_ACK) as u16;
    t[12..14].copy_from_slice(&offset_flags.to_be_bytes());
    // The window: ten segments, the least the kernel's own first window offers (SYN windows are
    // never scaled; the kernel's next segment carries the connection's real window).
    let window = (mss as u32 * 10).min(u16::MAX as u32) as u16;
    t[14..16].copy_from_slice(&window.to_be_bytes());
    t[16..20].copy_from_slice(&[0; 4]); // checksum, urgent pointer
    let mut sum = tcp_len as u32
        + parse::IPPROTO_TCP as u32
        + addresses
        + ports
        + (reply.cookie >> 16)
        + (reply.cookie & 0xffff)
        + (ack >> 16)
        + (ack & 0xffff)
        + offset_flags as u32
        + window as u32;
    if opts >= MSS_OPTION {
        let m = bytes_mut::<MSS_OPTION>(ctx, l4 + TCP_HDR)?;
        m.copy_from_slice(&[OPT_MSS, 4, (mss >> 8) as u8, mss as u8]);
        sum += sum16(m);
    }
    if opts == TS_OPTIONS {
        let o = bytes_mut::<{ TS_OPTIONS - MSS_OPTION }>(ctx, l4 + TCP_HDR + MSS_OPTION)?;
        o.copy_from_slice(&[OPT_EOL; TS_OPTIONS - MSS_OPTION]);
        if reply.sack {
            o[..2].copy_from_slice(&[OPT_SACK_PERM, 2]);
        } else {
            o[..2].copy_from_slice(&[OPT_NOP, OPT_NOP]);
        }
        o[2..4].copy_from_slice(&[OPT_TIMESTAMP, 10]);
        o[4..8].copy_from_slice(&cookie_tsval(reply.wscale, reply.sack).to_be_bytes());
        o[8..12].copy_from_slice(&reply.tsecr.to_be_bytes());
        if reply.wscale != NO_WSCALE {
            let ours = ((cookies >> COOKIE_WSCALE_SHIFT) & 0xf) as u8;
            o[12..16].copy_from_slice(&[OPT_NOP, OPT_WSCALE, 3, ours.min(TCP_MAX_WSCALE)]);
        }
        sum += sum16(o);
    }
    bytes_mut::<2>(ctx, l4 + 16)?.copy_from_slice(&fold(sum).to_be_bytes());
    Ok(())
}

/// The kernel's cookie for a SYN without options, made on the packet's own IP header and TCP
/// header (`h`: `N - TCP_HDR` bytes of IP header, then the TCP header), Linux 6.0; `None` as
/// `raw_cookie`.
#[inline(always)]
fn bare_cookie<const N: usize>(h: &mut [u8; N]) -> Option<u32> {
    let ip_len = N - TCP_HDR;
    if !port_marked(u16::from_be_bytes([h[ip_len + 2], h[ip_len + 3]])) {
        return None;
    }
    let iph = h.as_mut_ptr();
    // SAFETY: the helpers read the fixed IP header and `TCP_HDR` bytes of the TCP header, both
    // in `h`, which `bytes_mut` proved inside the packet (the verifier checks it too).
    let made = unsafe {
        let th = iph.add(ip_len) as *mut tcphdr;
        if ip_len == IPV6_HDR {
            bpf_tcp_raw_gen_syncookie_ipv6(iph as *mut ipv6hdr, th, TCP_HDR as u32)
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(iph as *mut iphdr, th, TCP_HDR as u32)
        }
    };
    (made >= 0).then_some(made as u32)
}

/// Whether the listeners on `port` were made to accept cookies in the last two minutes
/// (`COOKIE_PORTS`, kept by the daemon), as the kernel requires of a cookie made from the SYN
/// alone.
#[inline(always)]
fn port_marked(port: u16) -> bool {
    COOKIE_PORTS.get(port as u32).copied().unwrap_or(0) > clock::coarse_ns()
}

/// The kernel's cookie for the SYN whose IP header (`iph`, IPv6 when `v6`) and TCP header with
/// its options (`th`, `th_len` bytes) are given, from the headers alone; `None` when the SYN's
/// port has no listener marked as accepting cookies now (`COOKIE_PORTS`), or the kernel makes
/// none (built without SYN cookies).
#[inline(always)]
fn raw_cookie(iph: &mut [u8; 40], v6: bool, th: &mut [u8; 64], th_len: u32) -> Option<u32> {
    if !port_marked(u16::from_be_bytes([th[2], th[3]])) {
        return None;
    }
    // 20 to 60 as the verifier sees it, and unchanged for any data offset of 5 to 15 words.
    let th_len = 20 + (th_len.wrapping_sub(20) & 0x3c).min(40);
    // SAFETY: the helpers read the fixed size of their IP header (20 or 40 bytes, both within
    // `iph`) and `th_len` bytes of `th` (at most 60 of its 64).
    let made = unsafe {
        if v6 {
            bpf_tcp_raw_gen_syncookie_ipv6(
                iph.as_mut_ptr() as *mut ipv6hdr,
                th.as_mut_ptr() as *mut tcphdr,
                th_len,
            )
        } else {
            bpf_tcp_raw_gen_syncookie_ipv4(
                iph.as_mut_ptr() as *mut iphdr,
                th.as_mut_ptr() as *mut tcphdr,
                th_len,
            )
        }
    };
    (made >= 0).then_some(made as u32)
}

/// Makes the frame `end` bytes long (shrinking it past the TCP header, or growing it into its
/// tailroom); false when the kernel cannot.
#[inline(always)]
fn resize(ctx: &mut XdpContext, end: usize) -> bool {
    let len = ctx.data_end() - ctx.data();
    // SAFETY: packet pointers are derived again after this call.
    len == end || unsafe { bpf_xdp_adjust_tail(ctx.ctx as *mut _, end as i32 - len as i32) } == 0
}
