//! The source lists: `mx_allow` (MX-only mode: the only sources port 25 accepts), `trusted`
//! (exempt from budgets) and `block` (dropped on every port). Each list is the union of CIDRs
//! in the configuration, files (one CIDR per line), providers' SPF records (`spf.rs`), and
//! entries added at run time (`mailguard allow|trust|block add`).

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{ConfigError, Place, parse_cidr};

/// The three lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListName {
    MxAllow,
    Trusted,
    Block,
}

impl ListName {
    pub const ALL: [ListName; 3] = [ListName::MxAllow, ListName::Trusted, ListName::Block];

    pub fn name(self) -> &'static str {
        match self {
            ListName::MxAllow => "mx_allow",
            ListName::Trusted => "trusted",
            ListName::Block => "block",
        }
    }

    /// The list's number in the indexes and `Settings::index` (`INDEX_*`; its IPv6 index's
    /// bits are those of `v6_list` of it).
    pub fn index(self) -> u32 {
        match self {
            ListName::MxAllow => guard_common::INDEX_MX_ALLOW,
            ListName::Trusted => guard_common::INDEX_TRUSTED,
            ListName::Block => guard_common::INDEX_BLOCK,
        }
    }
}

impl fmt::Display for ListName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where one list's entries come from (besides run-time additions).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ListSources {
    #[serde(serialize_with = "crate::config::serialize_nets")]
    pub cidrs: Vec<IpNet>,
    pub files: Vec<PathBuf>,
    /// Domains whose SPF records give ranges (followed through include/redirect/a/mx).
    pub spf: Vec<String>,
}

impl ListSources {
    /// Whether the list has sources that need fetching (files or DNS).
    pub fn is_external(&self) -> bool {
        !self.files.is_empty() || !self.spf.is_empty()
    }

    /// The external sources, as recorded with what was fetched from them.
    pub fn external(&self) -> Vec<String> {
        let files = self.files.iter().map(|f| format!("file:{}", f.display()));
        files
            .chain(self.spf.iter().map(|d| format!("spf:{d}")))
            .collect()
    }
}

/// The `[lists]` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lists {
    pub lists: BTreeMap<ListName, ListSources>,
    /// Seconds between refreshes of files and SPF records.
    pub refresh_interval: u64,
    /// A refresh that would remove more than this share of a list's fetched entries is
    /// refused (unless forced).
    pub max_shrink: f64,
    /// DNS server for SPF lookups (`None`: the system resolver from /etc/resolv.conf).
    pub dns_server: Option<std::net::SocketAddr>,
    /// DNS lookups allowed per SPF record tree (RFC 7208 says 10).
    pub spf_lookup_limit: u32,
    /// IPv6 prefixes the index table holds, over all lists (and both versions of a list while
    /// it is replaced); a list that does not fit is looked up in its trie.
    pub ipv6_index_capacity: u32,
    /// Where the last good version of every list and the run-time changes are kept.
    pub state_dir: PathBuf,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/mailguard";
/// Default `ipv6_index_capacity`: a table of 4 MiB.
pub const DEFAULT_IPV6_INDEX_CAPACITY: u32 = 1 << 17;

impl Default for Lists {
    fn default() -> Self {
        Lists {
            lists: ListName::ALL
                .iter()
                .map(|l| (*l, ListSources::default()))
                .collect(),
            refresh_interval: 3600,
            max_shrink: 0.5,
            dns_server: None,
            spf_lookup_limit: 10,
            ipv6_index_capacity: DEFAULT_IPV6_INDEX_CAPACITY,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

impl Lists {
    pub fn sources(&self, list: ListName) -> &ListSources {
        &self.lists[&list]
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLists {
    refresh_interval: Option<Spanned<i64>>,
    max_shrink: Option<Spanned<f64>>,
    dns_server: Option<Spanned<String>>,
    spf_lookup_limit: Option<Spanned<i64>>,
    ipv6_index_capacity: Option<Spanned<i64>>,
    state_dir: Option<String>,
    mx_allow: Option<RawList>,
    trusted: Option<RawList>,
    block: Option<RawList>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawList {
    cidrs: Option<Vec<Spanned<String>>>,
    files: Option<Vec<String>>,
    spf: Option<Vec<Spanned<String>>>,
}

fn list(raw: Option<RawList>, name: ListName, place: &Place) -> Result<ListSources, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ListSources::default());
    };
    let mut out = ListSources::default();
    for (i, c) in raw.cidrs.iter().flatten().enumerate() {
        out.cidrs.push(
            parse_cidr(c.get_ref())
                .map_err(|m| place.error(c.span(), Some(format!("lists.{name}.cidrs[{i}]")), m))?,
        );
    }
    out.files = raw
        .files
        .unwrap_or_default()
        .into_iter()
        .map(PathBuf::from)
        .collect();
    for (i, d) in raw.spf.iter().flatten().enumerate() {
        let domain = d.get_ref().trim_end_matches('.').to_ascii_lowercase();
        if !valid_domain(&domain) {
            return Err(place.error(
                d.span(),
                Some(format!("lists.{name}.spf[{i}]")),
                format!("`{}` is not a domain name", d.get_ref()),
            ));
        }
        if name == ListName::Block {
            return Err(place.error(
                d.span(),
                Some(format!("lists.{name}.spf[{i}]")),
                "SPF records list senders to allow, not to block".into(),
            ));
        }
        out.spf.push(domain);
    }
    Ok(out)
}

/// A DNS name: labels of letters, digits, hyphens and underscores (`_spf`), 1 to 63 characters,
/// at most 253 in all.
pub fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

pub(crate) fn validate(raw: Option<RawLists>, place: &Place) -> Result<Lists, ConfigError> {
    let d = Lists::default();
    let Some(raw) = raw else { return Ok(d) };
    let int = |v: &Option<Spanned<i64>>, key: &str, range, default| {
        crate::config::int(v, key, range, default, place)
    };
    let max_shrink = match &raw.max_shrink {
        None => d.max_shrink,
        Some(s) if (0.0..=1.0).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            return Err(place.error(
                s.span(),
                Some("lists.max_shrink".into()),
                format!("{} is not a share between 0.0 and 1.0", s.get_ref()),
            ));
        }
    };
    let dns_server = match &raw.dns_server {
        None => None,
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => Some(
            s.get_ref()
                .parse::<std::net::SocketAddr>()
                .or_else(|_| {
                    s.get_ref()
                        .parse::<std::net::IpAddr>()
                        .map(|ip| std::net::SocketAddr::new(ip, 53))
                })
                .map_err(|_| {
                    place.error(
                        s.span(),
                        Some("lists.dns_server".into()),
                        format!(
                            "`{}` is not an IP address (with an optional port)",
                            s.get_ref()
                        ),
                    )
                })?,
        ),
    };
    let mut lists = BTreeMap::new();
    lists.insert(
        ListName::MxAllow,
        list(raw.mx_allow, ListName::MxAllow, place)?,
    );
    lists.insert(
        ListName::Trusted,
        list(raw.trusted, ListName::Trusted, place)?,
    );
    lists.insert(ListName::Block, list(raw.block, ListName::Block, place)?);
    Ok(Lists {
        lists,
        refresh_interval: int(
            &raw.refresh_interval,
            "lists.refresh_interval",
            10..=604_800,
            d.refresh_interval as i64,
        )? as u64,
        max_shrink,
        dns_server,
        spf_lookup_limit: int(
            &raw.spf_lookup_limit,
            "lists.spf_lookup_limit",
            1..=100,
            d.spf_lookup_limit as i64,
        )? as u32,
        ipv6_index_capacity: int(
            &raw.ipv6_index_capacity,
            "lists.ipv6_index_capacity",
            1024..=4_194_304,
            d.ipv6_index_capacity as i64,
        )? as u32,
        state_dir: raw.state_dir.map(PathBuf::from).unwrap_or(d.state_dir),
    })
}

/// A CIDR list file: one CIDR (or address) per line; `#` starts a comment; blank lines are
/// skipped. An error names the file and the line.
pub fn parse_list_file(path: &Path, text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    // A byte order mark some editors write first is not part of the first entry.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        out.push(parse_cidr(entry).map_err(|m| format!("{}:{}: {m}", path.display(), i + 1))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn lists(text: &str) -> Result<Lists, String> {
        Config::parse(text, "t.toml")
            .map(|(c, _)| c.lists)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn full_section_parses() {
        let l = lists(
            r#"
[lists]
refresh_interval = 600
max_shrink = 0.25
dns_server = "198.18.0.53"
spf_lookup_limit = 8
ipv6_index_capacity = 4096
state_dir = "/tmp/mg"

[lists.mx_allow]
cidrs = ["198.18.10.0/24"]
files = ["/etc/mailguard/provider.txt"]
spf = ["_spf.Provider.TEST."]

[lists.block]
cidrs = ["2001:db8:bad::/48"]
"#,
        )
        .unwrap();
        assert_eq!(l.refresh_interval, 600);
        assert_eq!(l.max_shrink, 0.25);
        assert_eq!(l.dns_server, Some("198.18.0.53:53".parse().unwrap()));
        assert_eq!(l.spf_lookup_limit, 8);
        assert_eq!(l.ipv6_index_capacity, 4096);
        let mx = l.sources(ListName::MxAllow);
        assert_eq!(mx.cidrs[0].to_string(), "198.18.10.0/24");
        assert_eq!(mx.spf, vec!["_spf.provider.test"]);
        assert!(mx.is_external());
        assert!(!l.sources(ListName::Trusted).is_external());
        assert_eq!(l.sources(ListName::Block).cidrs.len(), 1);
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = lists("[lists]\nipv6_index_capacity = 10\n").unwrap_err();
        assert!(
            e.contains("`lists.ipv6_index_capacity`: 10 is out of range (1024 to 4194304)"),
            "{e}"
        );
        let e = lists("[lists.block]\ncidrs = [\"198.18.0.0/33\"]\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:2:10: `lists.block.cidrs[0]`: prefix length `/33`"),
            "{e}"
        );
        let e = lists("[lists.mx_allow]\nspf = [\"not a domain\"]\n").unwrap_err();
        assert!(
            e.contains("`lists.mx_allow.spf[0]`: `not a domain` is not a domain name"),
            "{e}"
        );
        let e = lists("[lists.block]\nspf = [\"example.test\"]\n").unwrap_err();
        assert!(e.contains("not to block"), "{e}");
        let e = lists("[lists]\nmax_shrink = 2.0\n").unwrap_err();
        assert!(e.contains("`lists.max_shrink`: 2 is not a share"), "{e}");
        let e = lists("[lists]\ndns_server = \"dns.example\"\n").unwrap_err();
        assert!(e.contains("`lists.dns_server`"), "{e}");
        let e = lists("[lists.allow]\ncidrs = []\n").unwrap_err();
        assert!(e.contains("allow"), "{e}");
    }

    #[test]
    fn list_files_report_file_and_line() {
        let p = Path::new("/etc/mailguard/provider.txt");
        let ok = parse_list_file(
            p,
            "# provider ranges\n198.18.10.0/24\n\n2001:db8:10::/48  # v6\n198.18.11.5\n",
        )
        .unwrap();
        assert_eq!(
            ok.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            ["198.18.10.0/24", "2001:db8:10::/48", "198.18.11.5/32"]
        );
        let e = parse_list_file(p, "198.18.10.0/24\n198.18.10.1/24\n").unwrap_err();
        assert_eq!(
            e,
            "/etc/mailguard/provider.txt:2: `198.18.10.1/24` has host bits set; did you mean `198.18.10.0/24`?"
        );
        let e = parse_list_file(p, "garbage here\n").unwrap_err();
        assert!(
            e.starts_with(
                "/etc/mailguard/provider.txt:1: `garbage here` is not an IP address or CIDR"
            ),
            "{e}"
        );
    }

    #[test]
    fn domains() {
        assert!(valid_domain("_spf.google.com"));
        assert!(!valid_domain("a..b"));
        assert!(!valid_domain("exa mple.com"));
        assert!(!valid_domain(&"a".repeat(64)));
    }
}
