//! rtnetlink: which XDP program an interface has (`xdp_program_on`, for naming one that is in
//! the way), and the daemon's view of interfaces coming and going: a socket subscribed to link
//! events (RTMGRP_LINK). The daemon waits on it beside its signals, and on any event
//! checks that its XDP attachment is still on its interface (`run.rs`); the messages
//! themselves are not parsed, since the check reads the kernel's state directly.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

/// A non-blocking rtnetlink socket that becomes readable when an interface appears, goes away
/// or changes.
pub struct LinkWatch {
    fd: OwnedFd,
}

impl LinkWatch {
    pub fn open() -> io::Result<LinkWatch> {
        // SAFETY: plain socket calls on a descriptor we own; `addr` is a valid sockaddr_nl.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_groups = libc::RTMGRP_LINK as u32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(LinkWatch { fd })
        }
    }

    /// The descriptor to wait on.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads and drops every pending message; true when there was one.
    pub fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            // SAFETY: reads at most `buf.len()` bytes into `buf`.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            // Empty (EAGAIN), or overrun (ENOBUFS: events were lost, which the check that
            // follows does not mind).
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

/// The id of the XDP program attached to interface `ifindex` (any mode), if one is, read over
/// rtnetlink (RTM_GETLINK, IFLA_XDP_PROG_ID).
pub fn xdp_program_on(ifindex: u32) -> io::Result<Option<u32>> {
    const RTM_GETLINK: u16 = 18;
    const RTM_NEWLINK: u16 = 16;
    const NLM_F_REQUEST: u16 = 1;
    const IFLA_XDP: u16 = 43;
    const IFLA_XDP_PROG_ID: u16 = 4;
    const NLA_TYPE_MASK: u16 = 0x3fff;
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: plain socket calls on a descriptor we own, with buffers of the sizes passed.
    let answer = unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        if libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 65536];
        let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        buf.truncate(n as usize);
        buf
    };
    let u16_at = |b: &[u8], i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    if answer.len() < 32 || u16_at(&answer, 4) != RTM_NEWLINK {
        return Ok(None);
    }
    let len = (u32::from_ne_bytes([answer[0], answer[1], answer[2], answer[3]]) as usize)
        .min(answer.len());
    // Walks the attributes of [start, end), calling `f` with each (type, payload).
    fn attrs(b: &[u8], mut at: usize, end: usize, mut f: impl FnMut(u16, &[u8])) {
        while at + 4 <= end {
            let len = u16::from_ne_bytes([b[at], b[at + 1]]) as usize;
            if len < 4 || at + len > end {
                return;
            }
            f(
                u16::from_ne_bytes([b[at + 2], b[at + 3]]),
                &b[at + 4..at + len],
            );
            at += (len + 3) & !3;
        }
    }
    let mut prog = None;
    attrs(&answer, 32, len, |kind, payload| {
        if kind & NLA_TYPE_MASK == IFLA_XDP {
            attrs(payload, 0, payload.len(), |kind, value| {
                if kind & NLA_TYPE_MASK == IFLA_XDP_PROG_ID && value.len() >= 4 {
                    let id = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
                    prog = (id != 0).then_some(id);
                }
            });
        }
    });
    Ok(prog)
}
