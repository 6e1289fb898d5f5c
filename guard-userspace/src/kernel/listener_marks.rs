//! Marking the host's mail listeners as sending SYN cookies, for the cookies XDP makes from a
//! SYN's headers alone (`bpf_tcp_raw_gen_syncookie_ipv4/ipv6`, Linux 6.0).
//!
//! The kernel turns a cookie ACK into a connection only on a listener that sent a cookie itself
//! in the last two minutes (`tcp_synq_no_recent_overflow`), and a listener sends one only when
//! `net.ipv4.tcp_syncookies` is 2 or its SYN queue is full. So, while cookies are needed, the
//! daemon has each mail listener send one about every minute: it sets the setting to 2, sends
//! each listener one SYN over the loopback from a port no socket holds (a raw socket: no
//! connection is made, the mail server sees nothing, the listener's SYN-ACK is answered by the
//! kernel's RST), waits for the kernel's count of cookies sent to show them, and puts the
//! setting back. The setting is 2 for well under a millisecond: a known client's SYN that
//! reaches the kernel in that instant is answered with a cookie too, as the kernel would under
//! its own flood handling.
//!
//! The listeners are read from `/proc/net/tcp` and `/proc/net/tcp6`: each is sent its SYN at the
//! address it is bound to (the loopback address of its family for a wildcard).

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use super::{
    netstat,
    syncookie_sysctl::{self, SysctlError},
};

/// How long the kernel accepts cookie ACKs on a listener after it last sent a cookie
/// (`TCP_SYNCOOKIE_VALID`).
pub const KERNEL_MARK_LASTS: Duration = Duration::from_secs(120);
/// How long after a marking XDP may answer with cookies: the kernel's two minutes less a margin
/// for a marking that comes late.
pub const XDP_TRUSTS_A_MARK: Duration = Duration::from_secs(100);
/// How often the listeners are marked while cookies are needed.
pub const MARK_EVERY: Duration = Duration::from_secs(60);
/// How long to wait for the kernel's count of cookies sent to show the markings.
const CONFIRM_WITHIN: Duration = Duration::from_millis(200);

/// A TCP socket in the LISTEN state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The address it is bound to (unspecified: every address).
    pub addr: IpAddr,
    pub port: u16,
    /// Its socket inode: a listener closed and opened again (a restarted mail server) has a new
    /// one, and no mark.
    pub inode: u64,
}

impl Listener {
    /// Where its marking SYN goes: its own address, or the loopback address of its family.
    fn target(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(a) => a.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(a)),
            a => a,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MarkError {
    #[error("{0}")]
    Sysctl(#[from] SysctlError),
    #[error("cannot send the marking SYN to {to}: {source}")]
    Send { to: SocketAddr, source: io::Error },
    #[error(
        "the kernel counted {seen} of the {sent} cookies the listeners were asked for (TcpExt SyncookiesSent)"
    )]
    Unconfirmed { sent: u64, seen: u64 },
}

/// The listeners on `ports` in this network namespace (none where the tables cannot be read).
/// Read every second while cookies are needed, so only the tables' first lines are read: the
/// kernel lists its listening sockets before any other (`tcp_get_idx`: the listening hash, then
/// the established one), and a table read only that far costs the kernel its listeners, not
/// the host's every connection.
pub fn listeners(ports: &[u16]) -> Vec<Listener> {
    let mut found = Vec::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(file) = std::fs::File::open(path) {
            found.extend(read_table(io::BufReader::new(file), v6, ports));
        }
    }
    found.sort_by_key(|l| (l.port, l.inode));
    found
}

/// The listeners on `ports` in a table laid out as `/proc/net/tcp` (`v6`: `/proc/net/tcp6`),
/// read up to its first socket in another state (listeners come first). Lines that do not
/// parse are skipped.
pub fn read_table(table: impl io::BufRead, v6: bool, ports: &[u16]) -> Vec<Listener> {
    const LISTEN: &str = "0A";
    let mut found = Vec::new();
    for line in table.lines().skip(1).map_while(Result::ok) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.get(3) {
            Some(&LISTEN) => found.extend(listener(&fields, v6, ports)),
            // A socket in another state: no listener comes after it.
            Some(_) => break,
            None => {}
        }
    }
    found
}

/// The listener a LISTEN line's `fields` describe, when it is on one of `ports`.
fn listener(fields: &[&str], v6: bool, ports: &[u16]) -> Option<Listener> {
    let (addr, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !ports.contains(&port) {
        return None;
    }
    let addr = parse_address(addr, v6)?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(Listener { addr, port, inode })
}

/// An address as the kernel prints it there: 32-bit words in hex, each in host byte order.
fn parse_address(hex: &str, v6: bool) -> Option<IpAddr> {
    let words = if v6 { 4 } else { 1 };
    if hex.len() != words * 8 {
        return None;
    }
    let mut bytes = Vec::with_capacity(words * 4);
    for w in 0..words {
        let word = u32::from_str_radix(&hex[w * 8..w * 8 + 8], 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    Some(if v6 {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))
    })
}

/// Has every listener of `listeners` send a cookie (see the module's comment), with
/// `net.ipv4.tcp_syncookies` 2 for that instant and put back to its value before, whatever
/// happens (the value mailguard found is kept in `run_dir` meanwhile, as for any change).
/// Returns when the marking began: the marks hold `KERNEL_MARK_LASTS` from then.
pub fn mark(listeners: &[Listener], run_dir: &Path) -> Result<Instant, MarkError> {
    let began = Instant::now();
    if listeners.is_empty() {
        return Ok(began);
    }
    let steady = syncookie_sysctl::current()?;
    let before = netstat::tcp_ext("SyncookiesSent");
    syncookie_sysctl::hold(run_dir, 2)?;
    let sent = send_all(listeners).and_then(|()| {
        let wanted = listeners.len() as u64;
        let deadline = Instant::now() + CONFIRM_WITHIN;
        loop {
            let seen = netstat::tcp_ext("SyncookiesSent").saturating_sub(before);
            if seen >= wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(MarkError::Unconfirmed { sent: wanted, seen });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    syncookie_sysctl::hold(run_dir, steady)?;
    sent.map(|()| began)
}

fn send_all(listeners: &[Listener]) -> Result<(), MarkError> {
    for (i, l) in listeners.iter().enumerate() {
        let to = SocketAddr::new(l.target(), l.port);
        // A source port in the dynamic range that differs per listener and per marking; the
        // listener's SYN-ACK to it finds no socket either way.
        let sport = 49152 + ((std::process::id() as u16).wrapping_mul(31) ^ (i as u16)) % 16384;
        send_syn(to, sport).map_err(|source| MarkError::Send { to, source })?;
    }
    Ok(())
}

/// Sends one SYN from `to`'s own address, port `sport`, to `to`, through a raw socket.
fn send_syn(to: SocketAddr, sport: u16) -> io::Result<()> {
    let (family, src, dst) = match to.ip() {
        IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec(), a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec(), a.octets().to_vec()),
    };
    let segment = syn_segment(&src, &dst, sport, to.port());
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_TCP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (storage, len) = sockaddr(to);
    // From the listener's own address, which the checksum covers. SAFETY: `storage` holds an
    // address of `len` bytes.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `segment` and `storage` outlive the call; `len` is the size of the address in
    // `storage`. The raw socket's port must be 0 (it is the protocol for raw sockets).
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            segment.as_ptr() as *const libc::c_void,
            segment.len(),
            0,
            &storage as *const libc::sockaddr_storage as *const libc::sockaddr,
            len,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The address of `to` for sendto on a raw socket (its port 0).
fn sockaddr(to: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to.ip() {
        IpAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: 0,
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A bare SYN (no options) from `src`:`sport` to `dst`:`dport`, with its checksum over the
/// pseudo-header of the addresses (4 or 16 bytes each).
pub fn syn_segment(src: &[u8], dst: &[u8], sport: u16, dport: u16) -> [u8; 20] {
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&(u32::from(sport) << 16 | u32::from(dport)).to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut sum: u32 = 6 + t.len() as u32;
    for chunk in src.chunks(2).chain(dst.chunks(2)).chain(t.chunks(2)) {
        sum += u32::from(u16::from_be_bytes([chunk[0], chunk[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    t[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0019 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0100007F:024B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4545 1 0000000000000000 100 0 0 10 0
   3: 0100007F:0019 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0019 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5151 1 0000000000000000 100 0 0 10 0
   1: B80D0120000000000000000001000000:024B 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5252 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listeners_on_mail_ports_are_read_with_their_addresses() {
        // Little-endian words, as on the machines this runs on.
        if cfg!(target_endian = "big") {
            return;
        }
        let ports = [25, 587];
        assert_eq!(
            read_table(TCP.as_bytes(), false, &ports),
            vec![
                Listener {
                    addr: "0.0.0.0".parse().unwrap(),
                    port: 25,
                    inode: 4242
                },
                Listener {
                    addr: "127.0.0.1".parse().unwrap(),
                    port: 587,
                    inode: 4343
                },
            ],
            "port 22 is no mail port, an established connection no listener"
        );
        assert_eq!(
            read_table(TCP6.as_bytes(), true, &ports),
            vec![
                Listener {
                    addr: "::".parse().unwrap(),
                    port: 25,
                    inode: 5151
                },
                Listener {
                    addr: "2001:db8::1".parse().unwrap(),
                    port: 587,
                    inode: 5252
                },
            ]
        );
        assert!(read_table(&b"header\ngarbage line\n"[..], false, &ports).is_empty());
    }

    /// A table whose reads are counted.
    struct Counted<'a> {
        text: &'a [u8],
        read: usize,
    }

    impl io::Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.text.len() - self.read);
            buf[..n].copy_from_slice(&self.text[self.read..self.read + n]);
            self.read += n;
            Ok(n)
        }
    }

    #[test]
    fn the_table_is_read_no_further_than_its_listeners() {
        let mut text = TCP.to_string();
        let connection = TCP.lines().nth(4).unwrap();
        assert!(connection.contains(" 01 "), "{connection}");
        // A busy host's connections, then a listener where the kernel never lists one.
        for _ in 0..2000 {
            text += connection;
            text += "\n";
        }
        text += TCP.lines().nth(1).unwrap();
        text += "\n";
        let mut table = Counted {
            text: text.as_bytes(),
            read: 0,
        };
        let found = read_table(io::BufReader::new(&mut table), false, &[25, 587]);
        assert_eq!(
            found.iter().map(|l| l.inode).collect::<Vec<_>>(),
            vec![4242, 4343]
        );
        assert!(
            table.read < text.len() / 10,
            "read {} of the table's {} bytes",
            table.read,
            text.len()
        );
    }

    #[test]
    fn wildcards_are_marked_over_the_loopback() {
        let l = |a: &str| Listener {
            addr: a.parse().unwrap(),
            port: 25,
            inode: 1,
        };
        assert_eq!(
            l("0.0.0.0").target(),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(l("::").target(), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(
            l("::ffff:198.18.0.1").target(),
            "198.18.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            l("2001:db8::1").target(),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_syn_checksum_verifies() {
        let (src, dst) = ([198, 18, 0, 1], [198, 18, 0, 1]);
        let t = syn_segment(&src, &dst, 50000, 25);
        let mut sum: u32 = 6 + 20;
        for c in src.chunks(2).chain(dst.chunks(2)).chain(t.chunks(2)) {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff, "a segment with its checksum sums to all ones");
        assert_eq!(t[13], 0x02, "SYN alone");
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 25);
    }
}
