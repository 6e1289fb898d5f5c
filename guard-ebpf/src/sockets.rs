//! Does a packet belong to something the host started? Asks the kernel's socket tables
//! (`bpf_skc_lookup_tcp`, `bpf_sk_lookup_udp`) in the namespace of the receiving device.
//! Every socket reference taken is released before returning.

use core::{ffi::c_void, mem};

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple, tcphdr},
    helpers::generated::{
        bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_gen_syncookie,
    },
    programs::XdpContext,
};
use guard_common::Reason;

use crate::parse::{Ip, bytes};

/// The lookup tuple for a packet: its source is the remote end, its destination the host.
/// Returns the tuple and its size (IPv4 or IPv6 part of the union).
#[inline(always)]
fn tuple(
    ctx: &XdpContext,
    ip: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Result<(bpf_sock_tuple, u32), Reason> {
    // SAFETY: bpf_sock_tuple is plain old data; all-zero is a valid value.
    let mut t: bpf_sock_tuple = unsafe { mem::zeroed() };
    let sport = u16::from_ne_bytes(sport);
    let dport = u16::from_ne_bytes(dport);
    if ip.v6 {
        // Source then destination address, 16 bytes each, contiguous in the header.
        let a = bytes::<32>(ctx, ip.src_off())?;
        let v6 = unsafe { &mut t.__bindgen_anon_1.ipv6 };
        for i in 0..4 {
            v6.saddr[i] = u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
            v6.daddr[i] =
                u32::from_ne_bytes([a[16 + 4 * i], a[17 + 4 * i], a[18 + 4 * i], a[19 + 4 * i]]);
        }
        v6.sport = sport;
        v6.dport = dport;
        Ok((
            t,
            mem::size_of_val(unsafe { &t.__bindgen_anon_1.ipv6 }) as u32,
        ))
    } else {
        let a = bytes::<8>(ctx, ip.src_off())?;
        let v4 = unsafe { &mut t.__bindgen_anon_1.ipv4 };
        v4.saddr = u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        v4.daddr = u32::from_ne_bytes([a[4], a[5], a[6], a[7]]);
        v4.sport = sport;
        v4.dport = dport;
        Ok((
            t,
            mem::size_of_val(unsafe { &t.__bindgen_anon_1.ipv4 }) as u32,
        ))
    }
}

/// The TCP socket the packet is for, as `bpf_skc_lookup_tcp` finds it, handed to `with` and
/// released after; `None` when there is none.
#[inline(always)]
fn with_tcp_socket<R>(
    ctx: &XdpContext,
    ip: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
    with: impl FnOnce(*mut bpf_sock) -> R,
) -> Result<Option<R>, Reason> {
    let (mut t, size) = tuple(ctx, ip, sport, dport)?;
    // SAFETY: the helper reads `size` bytes of `t`, a valid tuple on our stack; the context
    // pointer is the program's own.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx as *mut c_void,
            &mut t,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Ok(None);
    }
    let r = with(sk);
    // SAFETY: the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    Ok(Some(r))
}

/// True when the packet matches a TCP socket that is not listening: an established, closing
/// or connecting (SYN-SENT) connection, or a time-wait entry.
#[inline(always)]
pub fn tcp_connection_exists(
    ctx: &XdpContext,
    ip: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Result<bool, Reason> {
    // SAFETY: non-null results of the lookup point to a sock_common the verifier lets us read.
    let state = with_tcp_socket(ctx, ip, sport, dport, |sk| unsafe { (*sk).state })?;
    Ok(state.is_some_and(|s| s != BPF_TCP_LISTEN))
}

/// The kernel's SYN cookie for a SYN to a listening socket of the host: (cookie, MSS the cookie
/// encodes), from `bpf_tcp_gen_syncookie` on the listener `bpf_skc_lookup_tcp` finds. `iph` and
/// `th` are copies of the SYN's IP header (`iph_len` bytes) and TCP header with its options
/// (`th_len` bytes, its data offset). `None` when no socket listens there, or the kernel makes
/// no cookie: its SYN cookies off (`net.ipv4.tcp_syncookies` = 0), or neither set to always (2)
/// nor the listener's SYN queue full, or its accept queue full. A cookie made this way marks the
/// listener as having sent cookies recently, which the kernel requires of the returning ACK.
#[inline(always)]
pub fn syn_cookie(
    ctx: &XdpContext,
    ip: &Ip,
    iph: &mut [u8; 40],
    iph_len: u32,
    th: &mut [u8; 64],
    th_len: u32,
) -> Result<Option<(u32, u16)>, Reason> {
    // A kernel without the helper: never called (the verifier does not walk this code either;
    // userspace then leaves cookies off, so this is not reached).
    if !crate::features::has(guard_common::FEATURE_SYN_COOKIE) {
        return Ok(None);
    }
    // 20 to 60 as the verifier sees it, and unchanged for any data offset of 5 to 15 words.
    let th_len = 20 + (th_len.wrapping_sub(20) & 0x3c).min(40);
    let made = with_tcp_socket(ctx, ip, [th[0], th[1]], [th[2], th[3]], |sk| {
        // SAFETY: a sock_common the lookup returned.
        if unsafe { (*sk).state } != BPF_TCP_LISTEN {
            return -1;
        }
        // SAFETY: the helper reads `iph_len` and `th_len` bytes of the two buffers, which are
        // that long at least; `sk` is the listener.
        unsafe {
            bpf_tcp_gen_syncookie(
                sk as *mut c_void,
                iph.as_mut_ptr() as *mut c_void,
                iph_len.min(40),
                th.as_mut_ptr() as *mut tcphdr,
                th_len,
            )
        }
    })?
    .unwrap_or(-1);
    Ok((made >= 0).then_some((made as u32, (made >> 32) as u16)))
}

/// True when the packet matches a connected UDP socket (one with a remote port), the way a
/// resolver or NTP client socket receives its replies. Unconnected listeners do not count.
#[inline(always)]
pub fn udp_connected_socket_exists(
    ctx: &XdpContext,
    ip: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Result<bool, Reason> {
    let (mut t, size) = tuple(ctx, ip, sport, dport)?;
    // SAFETY: as in tcp_connection_exists.
    let sk: *mut bpf_sock = unsafe {
        bpf_sk_lookup_udp(
            ctx.ctx as *mut c_void,
            &mut t,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return Ok(false);
    }
    // SAFETY: a full socket returned by the lookup; released right after.
    let remote_port = unsafe { (*sk).dst_port };
    unsafe { bpf_sk_release(sk as *mut c_void) };
    Ok(remote_port != 0)
}
