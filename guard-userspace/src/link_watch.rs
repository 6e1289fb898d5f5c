//! The daemon's view of network interfaces coming and going: an rtnetlink socket subscribed to
//! link events (RTMGRP_LINK). The daemon waits on it beside its signals, and on any event
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
