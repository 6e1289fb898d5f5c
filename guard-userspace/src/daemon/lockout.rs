//! Lock-out protection: before a change (a start, a reload, `block add`) is put in force, the
//! live TCP sessions into this host, read from the kernel's socket table (/proc/net/tcp and
//! tcp6, not from environment variables, which sudo drops), are checked against what the
//! change would do to their packets. A change that would cut one, or that blocks every IPv4
//! or IPv6 source, is refused unless forced, and the refusal names each session.
//!
//! What cuts an established session: its source on the block list (every packet dropped), or
//! its port opened only to sources that no longer include it (`open_ports.from`: every packet
//! judged by source). Closing a port does not: the session's packets still match its socket
//! and pass as replies; only new connections are refused (the configuration warns of that).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use ipnet::IpNet;

use crate::{
    config::{Config, Protocol},
    kernel::policy::AddrList,
};

/// An established TCP connection into this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

impl fmt::Display for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> port {}", self.remote, self.local.port())
    }
}

/// A live session a change would cut, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cut {
    pub session: Session,
    pub why: String,
}

/// The established TCP connections whose local port is `ports` (the ports that take new
/// connections: a session to one of them came in from outside).
pub fn live_sessions(ports: &[u16]) -> Vec<Session> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|text| parse_proc_net_tcp(&text))
        .filter(|s| ports.contains(&s.local.port()))
        .collect()
}

/// ESTABLISHED entries of a /proc/net/tcp or tcp6 table; IPv4-mapped IPv6 peers (dual-stack
/// listeners) as IPv4, as XDP sees their packets.
pub fn parse_proc_net_tcp(text: &str) -> Vec<Session> {
    const ESTABLISHED: &str = "01";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || f[3] != ESTABLISHED {
                return None;
            }
            Some(Session {
                local: proc_addr(f[1])?,
                remote: proc_addr(f[2])?,
            })
        })
        .collect()
}

/// `0100007F:0016` (IPv4) or 32 hex digits of four host-order words (IPv6), then the port.
fn proc_addr(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            let v6 = Ipv6Addr::from(b);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Whether `list` holds `addr` (any prefix covering it).
fn holds(list: &AddrList, addr: IpAddr) -> Option<IpNet> {
    match addr {
        IpAddr::V4(a) => list.v4.keys().find_map(|(len, net)| {
            let net = IpNet::new(IpAddr::V4(Ipv4Addr::from(*net)), *len as u8).ok()?;
            net.contains(&IpAddr::V4(a)).then_some(net)
        }),
        IpAddr::V6(a) => list.v6.keys().find_map(|(len, net)| {
            let net = IpNet::new(IpAddr::V6(Ipv6Addr::from(*net)), *len as u8).ok()?;
            net.contains(&IpAddr::V6(a)).then_some(net)
        }),
    }
}

/// The sessions among `sessions` that `config`, with `block` as its whole block list, would
/// cut.
pub fn cuts(config: &Config, block: &AddrList, sessions: &[Session]) -> Vec<Cut> {
    sessions
        .iter()
        .filter_map(|s| {
            let remote = s.remote.ip();
            if let Some(net) = holds(block, remote) {
                return Some(Cut {
                    session: *s,
                    why: format!("{net} on the block list holds {remote}"),
                });
            }
            let port = s.local.port();
            let open = config
                .open_ports
                .iter()
                .find(|p| p.port == port && p.protocol == Protocol::Tcp)?;
            if !open.from.is_empty() && !open.from.iter().any(|n| n.contains(&remote)) {
                return Some(Cut {
                    session: *s,
                    why: format!("port {port} would accept only {}", join(&open.from)),
                });
            }
            None
        })
        .collect()
}

/// Entries that block every IPv4 or every IPv6 source.
pub fn whole_space(block: &AddrList) -> Vec<IpNet> {
    let mut all = Vec::new();
    if block.v4.keys().any(|(len, _)| *len == 0) {
        all.push("0.0.0.0/0".parse().expect("a CIDR"));
    }
    if block.v6.keys().any(|(len, _)| *len == 0) {
        all.push("::/0".parse().expect("a CIDR"));
    }
    all
}

/// What a change would do that locks someone out, one line each (empty: nothing).
pub fn dangers(cuts: &[Cut], whole: &[IpNet]) -> Vec<String> {
    whole
        .iter()
        .map(|w| format!("{w} on the block list blocks every source, SSH included"))
        .chain(
            cuts.iter()
                .map(|c| format!("it would cut the live session {} ({})", c.session, c.why)),
        )
        .collect()
}

/// The refusal of a change with `dangers`, with the remedy.
pub fn refusal(dangers: &[String]) -> String {
    format!(
        "refused: {}; nothing was changed (--force applies it anyway)",
        dangers.join("; ")
    )
}

/// A policy: a configuration and its whole block list.
pub struct Policy<'a> {
    pub config: &'a Config,
    pub block: &'a AddrList,
}

/// What changing from the policy in force (`None` at a first start) to `new` would do that
/// locks someone out: the live sessions it would cut that the policy in force does not, and
/// entries new to the block list that block every source. Nothing in monitor mode, which
/// drops nothing.
pub fn check(new: &Policy, in_force: Option<&Policy>) -> Vec<String> {
    if new.config.monitor {
        return Vec::new();
    }
    let configs: Vec<&Config> = std::iter::once(new.config)
        .chain(in_force.map(|p| p.config))
        .collect();
    let sessions = live_sessions(&watched_ports(&configs));
    let already: Vec<Session> = in_force
        .filter(|p| !p.config.monitor)
        .map(|p| cuts(p.config, p.block, &sessions))
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.session)
        .collect();
    let new_cuts: Vec<Cut> = cuts(new.config, new.block, &sessions)
        .into_iter()
        .filter(|c| !already.contains(&c.session))
        .collect();
    let whole_before = in_force.map(|p| whole_space(p.block)).unwrap_or_default();
    let whole: Vec<IpNet> = whole_space(new.block)
        .into_iter()
        .filter(|w| !whole_before.contains(w))
        .collect();
    dangers(&new_cuts, &whole)
}

/// The ports through which a live session can come in: every open TCP port of `configs`.
pub fn watched_ports(configs: &[&Config]) -> Vec<u16> {
    let mut ports: Vec<u16> = configs
        .iter()
        .flat_map(|c| c.open_ports.iter())
        .filter(|p| p.protocol == Protocol::Tcp)
        .map(|p| p.port)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 010012C6:0016 020012C6:C350 01 00000000:00000000 00:00000000 00000000     0        0 1 1 0 20 4 30 10 -1
   1: 010012C6:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: B80D0120000000000000000001000000:0016 B80D0120000000000000000002000000:D431 01 0
   1: 0000000000000000FFFF0000010012C6:0016 0000000000000000FFFF0000030012C6:D432 01 0
";

    #[test]
    fn the_socket_table_gives_established_sessions() {
        // The kernel prints each 32-bit word of an address as the CPU holds it (little endian).
        let v4 = parse_proc_net_tcp(TCP);
        assert_eq!(v4.len(), 1, "the listener is not a session");
        assert_eq!(v4[0].local, "198.18.0.1:22".parse().unwrap());
        assert_eq!(v4[0].remote, "198.18.0.2:50000".parse().unwrap());
        let v6 = parse_proc_net_tcp(TCP6);
        assert_eq!(v6[0].remote, "[2001:db8::2]:54321".parse().unwrap());
        // A dual-stack listener's IPv4 peer counts as IPv4.
        assert_eq!(v6[1].remote, "198.18.0.3:54322".parse().unwrap());
    }

    fn session(remote: &str) -> Session {
        Session {
            remote: remote.parse().unwrap(),
            local: "198.18.0.1:22".parse().unwrap(),
        }
    }

    #[test]
    fn a_block_or_a_source_restriction_cuts_a_session_and_is_named() {
        let (config, _) = Config::parse(
            "[[open_ports]]\nport = 22\nfrom = [\"198.18.7.0/24\"]\n",
            "t.toml",
        )
        .unwrap();
        let mut block = AddrList::default();
        block.insert(&"198.18.9.0/24".parse().unwrap(), 0);
        let sessions = [
            session("198.18.9.4:40000"),
            session("198.18.5.5:40001"),
            session("198.18.7.7:40002"),
        ];
        let cuts = cuts(&config, &block, &sessions);
        assert_eq!(cuts.len(), 2, "{cuts:?}");
        assert!(cuts[0].why.contains("198.18.9.0/24 on the block list"));
        assert!(cuts[1].why.contains("would accept only 198.18.7.0/24"));
        let message = refusal(&dangers(&cuts, &[]));
        assert!(message.contains("198.18.9.4:40000 -> port 22"), "{message}");
        assert!(message.contains("--force"), "{message}");
    }

    #[test]
    fn blocking_everyone_is_refused() {
        let mut block = AddrList::default();
        block.insert(&"0.0.0.0/0".parse().unwrap(), 0);
        block.insert(&"2001:db8::/32".parse().unwrap(), 0);
        assert_eq!(
            whole_space(&block),
            vec!["0.0.0.0/0".parse::<IpNet>().unwrap()]
        );
        let message = refusal(&dangers(&[], &whole_space(&block)));
        assert!(message.contains("0.0.0.0/0 on the block list blocks every source"));
    }
}
