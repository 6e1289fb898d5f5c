//! How the lists are shown: the `LISTS` part of `status`, `mailguard lists show|refresh`, and
//! `mailguard allow|trust|block list`; and the durations `--for` takes.

use std::fmt::Write as _;

use guard_common::{Reason, index_active_bit, v6_list};

use serde::Serialize;

use crate::{
    config::durations::human_duration,
    config::lists::ListName,
    feeds::keeper::ListReport,
    feeds::saved::{ListEntry, ListSummary},
};

/// A list in `status`: its summary and the packets it decided.
#[derive(Serialize, Debug, Clone)]
pub struct ListStatus {
    #[serde(flatten)]
    pub summary: ListSummary,
    /// Packets counted under `reason` (`mx_only_denied`, `trusted_source`, `blocked`).
    pub packets: Option<u64>,
    pub reason: &'static str,
    /// How XDP looks up IPv4 sources in the list: `index` (constant cost), `trie` (the list is
    /// too scattered for the index), or `None` when not known (no running program read).
    pub ipv4_lookup: Option<&'static str>,
    /// The same for IPv6 sources (`trie`: more distinct prefix lengths than the index takes,
    /// or its map full).
    pub ipv6_lookup: Option<&'static str>,
}

impl ListStatus {
    /// `index`: the `Settings::index` in force, when known.
    pub fn of(summary: ListSummary, packets: Option<u64>, index: Option<u32>) -> ListStatus {
        let reason = reason_of(summary.list).name();
        let lookup = |list: u32| {
            index.map(|bits| {
                if bits & index_active_bit(list) != 0 {
                    "index"
                } else {
                    "trie"
                }
            })
        };
        let list = summary.list.index();
        ListStatus {
            ipv4_lookup: lookup(list),
            ipv6_lookup: lookup(v6_list(list)),
            summary,
            packets,
            reason,
        }
    }
}

/// The reason that counts what a list decided: packets it passed or dropped.
pub fn reason_of(list: ListName) -> Reason {
    match list {
        ListName::MxAllow => Reason::MxOnlyDenied,
        ListName::Trusted => Reason::TrustedSource,
        ListName::Block => Reason::Blocked,
    }
}

/// "12m ago" / "never".
fn ago(then: Option<u64>, now: u64) -> String {
    match then {
        None => "never".into(),
        Some(t) => format!("{} ago", human_duration(now.saturating_sub(t))),
    }
}

/// The lists table, with the packets each list decided when known.
pub fn render_summaries(lists: &[ListStatus], mx_only: bool, now: u64) -> String {
    let mut out = format!(
        "\nlists (MX-only {}):\n{:<9} {:>8} {:>8} {:>8}  {:<14} {:>9}  {:<16} SOURCES\n",
        if mx_only {
            "ON: port 25 accepts only mx_allow"
        } else {
            "off"
        },
        "LIST",
        "IPV4",
        "IPV6",
        "RUNTIME",
        "PACKETS",
        "FAILURES",
        "LAST REFRESH"
    );
    for ListStatus {
        summary: l,
        packets,
        ipv4_lookup,
        ipv6_lookup,
        ..
    } in lists
    {
        let packets = packets.map_or("-".to_string(), |p| {
            format!("{p} {}", short(reason_of(l.list)))
        });
        let refreshed = if l.sources.is_empty() {
            "-".to_string()
        } else {
            ago(l.last_refresh, now)
        };
        let _ = writeln!(
            out,
            "{:<9} {:>8} {:>8} {:>8}  {:<14} {:>9}  {:<16} {}",
            l.list.name(),
            l.ipv4,
            l.ipv6,
            l.runtime,
            packets,
            l.refresh_failures,
            refreshed,
            if l.sources.is_empty() {
                "(config and run-time entries only)".to_string()
            } else {
                l.sources.join(" ")
            }
        );
        if ipv4_lookup == &Some("trie") && l.ipv4 > 0 {
            let _ = writeln!(
                out,
                "  {}: IPv4 lookups walk the trie: the list is too scattered for the index",
                l.list
            );
        }
        if ipv6_lookup == &Some("trie") && l.ipv6 > 0 {
            let _ = writeln!(
                out,
                "  {}: IPv6 lookups walk the trie: the list has more distinct prefix lengths than \
                 the index takes, or its map is full (the daemon's log says which)",
                l.list
            );
        }
        if let Some(e) = &l.last_error {
            let _ = writeln!(
                out,
                "  last refresh of {} FAILED (the last good version stays): {e}",
                l.list
            );
        }
    }
    out
}

fn short(r: Reason) -> &'static str {
    match r {
        Reason::MxOnlyDenied => "denied",
        Reason::TrustedSource => "exempt",
        _ => "dropped",
    }
}

/// One list's entries.
pub fn render_entries(list: ListName, entries: &[ListEntry], now: u64) -> String {
    let mut out = format!("{:<44} {:<22} EXPIRES\n", "CIDR", "ORIGIN");
    for e in entries {
        let expires = e.expires.map_or("never".to_string(), |t| {
            format!("in {}", human_duration(t.saturating_sub(now)))
        });
        let ban = e.ban.as_ref().map_or(String::new(), |b| {
            format!("  ({} events, offence {})", b.origin, b.strike)
        });
        let _ = writeln!(
            out,
            "{:<44} {:<22} {expires}{ban}",
            e.cidr.to_string(),
            e.origins.join(",")
        );
    }
    if entries.is_empty() {
        let _ = writeln!(out, "(the {list} list is empty)");
    }
    out
}

/// What a refresh did to each list.
pub fn render_refresh(reports: &[ListReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let _ = match (&r.entries, &r.error) {
            (Some(n), _) => writeln!(out, "{}: {n} entries fetched", r.list),
            (None, Some(e)) => {
                writeln!(out, "{}: FAILED, the last good version stays: {e}", r.list)
            }
            (None, None) => writeln!(out, "{}: nothing fetched", r.list),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_show_failures() {
        use guard_common::INDEX_MX_ALLOW;
        let l = ListSummary {
            list: ListName::MxAllow,
            ipv4: 3,
            ipv6: 1,
            runtime: 0,
            sources: vec!["spf:provider.test".into()],
            last_refresh: Some(1000),
            refresh_failures: 2,
            last_error: Some("SPF of provider.test: timed out".into()),
        };
        let both = index_active_bit(INDEX_MX_ALLOW) | index_active_bit(v6_list(INDEX_MX_ALLOW));
        let indexed = ListStatus::of(l.clone(), Some(7), Some(both));
        assert_eq!(indexed.ipv4_lookup, Some("index"));
        assert_eq!(indexed.ipv6_lookup, Some("index"));
        assert!(!render_summaries(&[indexed], true, 1060).contains("walk the trie"));
        let v4_only = ListStatus::of(l.clone(), Some(7), Some(index_active_bit(INDEX_MX_ALLOW)));
        let text = render_summaries(&[v4_only], true, 1060);
        assert!(
            text.contains("mx_allow: IPv6 lookups walk the trie"),
            "{text}"
        );
        assert!(!text.contains("IPv4 lookups walk"), "{text}");
        let text = render_summaries(&[ListStatus::of(l, Some(7), Some(0))], true, 1060);
        assert!(
            text.contains("mx_allow: IPv4 lookups walk the trie: the list is too scattered"),
            "{text}"
        );
        assert!(text.contains("7 denied"), "{text}");
        assert!(text.contains("MX-only ON"), "{text}");
        assert!(text.contains("1m00s ago"), "{text}");
        assert!(text.contains("spf:provider.test"), "{text}");
        assert!(text.contains("last refresh of mx_allow FAILED (the last good version stays): SPF of provider.test: timed out"), "{text}");
    }
}
