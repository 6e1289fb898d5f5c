//! The kernel's TCP counters of the namespace (`/proc/net/netstat`, the `TcpExt` lines: a line
//! of names, then a line of values).

/// The `TcpExt` counter `name` in `netstat` (the file's text); `None` when it has none.
pub fn tcp_ext_in(netstat: &str, name: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The `TcpExt` counter `name` now (0 when it cannot be read).
pub fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    tcp_ext_in(&text, name).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_is_found_by_its_name() {
        let text = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed\n\
                    TcpExt: 12 7 1\n\
                    IpExt: InNoRoutes\n\
                    IpExt: 0\n";
        assert_eq!(tcp_ext_in(text, "SyncookiesSent"), Some(12));
        assert_eq!(tcp_ext_in(text, "SyncookiesFailed"), Some(1));
        assert_eq!(tcp_ext_in(text, "InNoRoutes"), None);
        assert_eq!(tcp_ext_in("", "SyncookiesSent"), None);
    }
}
