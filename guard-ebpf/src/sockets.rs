//! Does a packet belong to something the host started? Asks the kernel's socket tables
//! (`bpf_skc_lookup_tcp`, `bpf_sk_lookup_udp`) in the namespace of the receiving device.
//! Every socket reference taken is released before returning.

use core::{ffi::c_void, mem};

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_TCP_LISTEN, bpf_sock, bpf_sock_tuple},
    helpers::generated::{bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp},
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

/// True when the packet matches a TCP socket that is not listening: an established, closing
/// or connecting (SYN-SENT) connection, or a time-wait entry.
#[inline(always)]
pub fn tcp_connection_exists(
    ctx: &XdpContext,
    ip: &Ip,
    sport: [u8; 2],
    dport: [u8; 2],
) -> Result<bool, Reason> {
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
        return Ok(false);
    }
    // SAFETY: non-null results of the lookup point to a sock_common the verifier lets us read;
    // the reference is released right after.
    let state = unsafe { (*sk).state };
    unsafe { bpf_sk_release(sk as *mut c_void) };
    Ok(state != BPF_TCP_LISTEN)
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
