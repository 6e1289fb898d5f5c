//! What a ban or a remote decision must never block, whatever fired it: the host itself and
//! its own networks (its neighbours, its gateway), the MX allowlist (the filtering provider
//! relays everyone's mail), trusted sources, and the networks of the operator's live sessions.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{daemon::lockout, feeds::bans::Spared, kernel::policy::AddrList};

/// What spares a net besides the lists, read at `at`.
pub struct Surroundings {
    pub at: Instant,
    pub sessions: Vec<lockout::Session>,
    pub own: Vec<IpAddr>,
}

/// How old the surroundings may get before they are read again.
pub const SURROUNDINGS_MAX_AGE: Duration = Duration::from_secs(2);

impl Surroundings {
    /// The operator's live sessions (`live`) and the host's addresses, now.
    pub fn read(live: &dyn Fn() -> Vec<lockout::Session>) -> Surroundings {
        Surroundings {
            at: Instant::now(),
            sessions: live(),
            own: host_addresses(),
        }
    }
}

/// Why `net` must not be blocked, if it must not.
pub fn why(
    net: &IpNet,
    around: &Surroundings,
    mx_allow: &AddrList,
    trusted: &AddrList,
) -> Option<Spared> {
    if net.addr().is_loopback() || net.addr().is_unspecified() {
        return Some(Spared::Local);
    }
    // A prefix must not take the host's own network (its neighbours, its gateway, its other
    // servers).
    if around.own.iter().any(|a| net.contains(a)) {
        return Some(Spared::Local);
    }
    if overlaps(mx_allow, net) {
        return Some(Spared::MxAllow);
    }
    if overlaps(trusted, net) {
        return Some(Spared::Trusted);
    }
    if around.sessions.iter().any(|s| net.contains(&s.remote.ip())) {
        return Some(Spared::LiveSession);
    }
    None
}

/// Whether `net` and an entry of `list` overlap, either containing the other.
pub fn overlaps(list: &AddrList, net: &IpNet) -> bool {
    let hit = |p: IpNet| p.contains(net) || net.contains(&p);
    match net {
        IpNet::V4(_) => list
            .v4
            .keys()
            .any(|(len, a)| IpNet::new(IpAddr::from(*a), *len as u8).is_ok_and(hit)),
        IpNet::V6(_) => list
            .v6
            .keys()
            .any(|(len, a)| IpNet::new(IpAddr::from(*a), *len as u8).is_ok_and(hit)),
    }
}

/// Why, in words, for the log.
pub fn explain(why: Spared) -> &'static str {
    match why {
        Spared::Local => {
            "the host itself or its own network (a block there would cut its neighbours and gateway)"
        }
        Spared::MxAllow => "in the MX allowlist (the filtering provider relays everyone's mail)",
        Spared::Trusted => "a trusted source",
        Spared::LiveSession => "it holds a live session of the operator",
        Spared::Monitor => "monitor mode",
        Spared::Capped => "over the cap on bans (bans.max_per_minute or bans.max_active)",
    }
}

/// The addresses of this host's interfaces (in its network namespace).
fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is an entry of the list getifaddrs made, valid until freeifaddrs.
        let entry = unsafe { &*at };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            match i32::from(unsafe { (*entry.ifa_addr).sa_family }) {
                libc::AF_INET => {
                    let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    let sa = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        at = entry.ifa_next;
    }
    // SAFETY: frees the list getifaddrs made, once.
    unsafe { libc::freeifaddrs(list) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_s_addresses_include_loopback() {
        assert!(host_addresses().contains(&IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn a_ban_overlapping_a_list_entry_either_way_is_found() {
        let mut list = AddrList::default();
        list.insert(&"198.18.5.0/24".parse().unwrap(), 0);
        list.insert(&"2001:db8:1::/48".parse().unwrap(), 0);
        for (net, hit) in [
            ("198.18.5.7/32", true),
            ("198.18.0.0/16", true),
            ("198.18.6.0/24", false),
            ("2001:db8:1:2::/64", true),
            ("2001:db8:2::/64", false),
        ] {
            assert_eq!(overlaps(&list, &net.parse().unwrap()), hit, "{net}");
        }
    }
}
