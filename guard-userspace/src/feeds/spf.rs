//! A provider's ranges from its SPF record (RFC 7208): the addresses its `v=spf1` record
//! passes, following `include`, `redirect`, `a` and `mx` recursively, with loop detection and a
//! limit on DNS lookups.
//!
//! mailguard wants ranges, not a verdict for one sender, so this is not `check_host()`: it
//! collects every range a pass (`+`, the default) mechanism names. Mechanisms with other
//! qualifiers are left out (a provider's record lists what it sends from), `+all` is refused
//! (it would let every address in), and `ptr`, `exists` and macros, which name no ranges, are
//! skipped.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;

use crate::feeds::dns::{Answer, DnsError, RecordType, Resolver};

/// How SPF records are looked up.
#[derive(Clone, Debug)]
pub struct Options {
    /// `None`: the system's name servers.
    pub dns_server: Option<SocketAddr>,
    /// DNS-querying terms (include, a, mx, redirect, ptr, exists) allowed per record tree.
    pub lookup_limit: u32,
}

/// Where DNS answers come from (the resolver, or a table in tests).
pub trait Lookup {
    fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<Answer>, DnsError>;
}

impl Lookup for Resolver {
    fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<Answer>, DnsError> {
        self.query(name, rtype)
    }
}

/// What went wrong, and in which record (`chain`: the domain whose record was read, after the
/// records that led to it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{problem} (in the SPF record of {})", chain.join(" → "))]
pub struct SpfError {
    pub chain: Vec<String>,
    pub problem: Box<Problem>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Dns(#[from] DnsError),
    #[error("{0} has no SPF record (no TXT record starting with `v=spf1`)")]
    NoRecord(String),
    #[error("{0} has {1} SPF records (RFC 7208 allows one)")]
    Multiple(String, usize),
    #[error("`{term}`: {message}")]
    Term { term: String, message: String },
    #[error("`{0}` includes a record that is already being read: a loop")]
    Loop(String),
    #[error("`{term}` needs more than {limit} DNS lookups (`lists.spf_lookup_limit`)")]
    Limit { term: String, limit: u32 },
}

/// The ranges `domain`'s SPF record passes, looked up as `options` say.
pub fn resolve(domain: &str, options: &Options) -> Result<BTreeSet<IpNet>, SpfError> {
    let resolver = Resolver::new(options.dns_server).map_err(|e| SpfError {
        chain: vec![domain.to_string()],
        problem: Box::new(Problem::Dns(e)),
    })?;
    ranges(domain, &resolver, options.lookup_limit)
}

/// The ranges `domain`'s SPF record passes, with answers from `dns`.
pub fn ranges(
    domain: &str,
    dns: &dyn Lookup,
    lookup_limit: u32,
) -> Result<BTreeSet<IpNet>, SpfError> {
    let mut walk = Walk {
        dns,
        limit: lookup_limit,
        lookups: 0,
        chain: Vec::new(),
        out: BTreeSet::new(),
    };
    walk.record(&domain.trim_end_matches('.').to_ascii_lowercase())?;
    Ok(walk.out)
}

struct Walk<'a> {
    dns: &'a dyn Lookup,
    limit: u32,
    lookups: u32,
    /// The records being read, outermost first.
    chain: Vec<String>,
    out: BTreeSet<IpNet>,
}

/// A mechanism's qualifier: only `Pass` contributes ranges.
#[derive(PartialEq, Eq)]
enum Qualifier {
    Pass,
    Other,
}

impl Walk<'_> {
    fn error(&self, problem: Problem) -> SpfError {
        SpfError {
            chain: self.chain.clone(),
            problem: Box::new(problem),
        }
    }

    fn term_error(&self, term: &str, message: impl Into<String>) -> SpfError {
        self.error(Problem::Term {
            term: term.into(),
            message: message.into(),
        })
    }

    /// Counts a DNS-querying term against the limit.
    fn count(&mut self, term: &str) -> Result<(), SpfError> {
        self.lookups += 1;
        if self.lookups > self.limit {
            return Err(self.error(Problem::Limit {
                term: term.into(),
                limit: self.limit,
            }));
        }
        Ok(())
    }

    fn record(&mut self, domain: &str) -> Result<(), SpfError> {
        if self.chain.iter().any(|d| d == domain) {
            return Err(self.error(Problem::Loop(domain.into())));
        }
        self.chain.push(domain.into());
        let txt = self
            .dns
            .lookup(domain, RecordType::Txt)
            .map_err(|e| self.error(e.into()))?;
        let records: Vec<String> = txt
            .into_iter()
            .filter_map(|a| match a {
                Answer::Txt(t) if is_spf(&t) => Some(t),
                _ => None,
            })
            .collect();
        let record = match records.len() {
            0 => return Err(self.error(Problem::NoRecord(domain.into()))),
            1 => records[0].clone(),
            n => return Err(self.error(Problem::Multiple(domain.into(), n))),
        };
        let mut redirect = None;
        let mut has_all = false;
        for term in record.split_ascii_whitespace().skip(1) {
            if let Some((name, value)) = modifier(term) {
                if name.eq_ignore_ascii_case("redirect") {
                    redirect = Some((term.to_string(), self.domain_spec(term, value)?));
                }
                // `exp` and unknown modifiers change no ranges.
                continue;
            }
            let (qualifier, mechanism) = match term.as_bytes()[0] {
                b'+' => (Qualifier::Pass, &term[1..]),
                b'-' | b'~' | b'?' => (Qualifier::Other, &term[1..]),
                _ => (Qualifier::Pass, term),
            };
            let (name, arg) = match mechanism.find([':', '/']) {
                Some(i) => (&mechanism[..i], &mechanism[i..]),
                None => (mechanism, ""),
            };
            match name.to_ascii_lowercase().as_str() {
                "all" => {
                    has_all = true;
                    if qualifier == Qualifier::Pass {
                        return Err(self.term_error(
                            term,
                            "passes every address; refusing to allow the whole Internet",
                        ));
                    }
                }
                "ip4" | "ip6" => {
                    let net = self.ip_range(term, name, arg)?;
                    if qualifier == Qualifier::Pass {
                        self.out.insert(net);
                    }
                }
                "a" | "mx" => {
                    self.count(term)?;
                    let (target, v4_len, v6_len) = self.host_spec(term, arg, domain)?;
                    if qualifier == Qualifier::Pass {
                        let hosts = if name.eq_ignore_ascii_case("mx") {
                            self.mx_hosts(term, &target)?
                        } else {
                            vec![target]
                        };
                        for host in hosts {
                            for addr in self.addresses(term, &host)? {
                                let len = if addr.is_ipv4() { v4_len } else { v6_len };
                                self.out
                                    .insert(IpNet::new(addr, len).expect("length checked").trunc());
                            }
                        }
                    }
                }
                "include" => {
                    self.count(term)?;
                    let Some(target) = arg.strip_prefix(':') else {
                        return Err(self.term_error(term, "include needs a domain"));
                    };
                    let target = self.domain_spec(term, target)?;
                    if qualifier == Qualifier::Pass {
                        self.record(&target)?;
                    }
                }
                // They name no ranges; they still cost a lookup in a real evaluation.
                "ptr" | "exists" => self.count(term)?,
                _ => return Err(self.term_error(term, "unknown mechanism")),
            }
        }
        // RFC 7208 6.1: redirect applies only when the record has no `all`.
        if let (Some((term, target)), false) = (redirect, has_all) {
            self.count(&term)?;
            self.record(&target)?;
        }
        self.chain.pop();
        Ok(())
    }

    /// A domain named in a term: macros cannot be expanded without a sender, so they are refused.
    fn domain_spec(&self, term: &str, spec: &str) -> Result<String, SpfError> {
        if spec.contains('%') {
            return Err(self.term_error(term, "SPF macros cannot be turned into ranges"));
        }
        let d = spec.trim_end_matches('.').to_ascii_lowercase();
        if !crate::config::lists::valid_domain(&d) {
            return Err(self.term_error(term, format!("`{spec}` is not a domain name")));
        }
        Ok(d)
    }

    fn ip_range(&self, term: &str, name: &str, arg: &str) -> Result<IpNet, SpfError> {
        let Some(spec) = arg.strip_prefix(':') else {
            return Err(self.term_error(term, format!("{name} needs an address")));
        };
        let v4 = name.eq_ignore_ascii_case("ip4");
        let (addr, len) = spec
            .split_once('/')
            .map_or((spec, None), |(a, l)| (a, Some(l)));
        let addr: IpAddr = addr
            .parse()
            .ok()
            .filter(|a: &IpAddr| a.is_ipv4() == v4)
            .ok_or_else(|| {
                self.term_error(
                    term,
                    format!("`{addr}` is not an IPv{} address", if v4 { 4 } else { 6 }),
                )
            })?;
        let max = if v4 { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                self.term_error(term, format!("prefix length `/{l}` is not 0 to {max}"))
            })?,
        };
        // SPF matches by prefix: host bits in a record do not matter.
        Ok(IpNet::new(addr, len).expect("length checked").trunc())
    }

    /// `[:domain][/len4][//len6]` of `a` and `mx`.
    fn host_spec(
        &self,
        term: &str,
        arg: &str,
        current: &str,
    ) -> Result<(String, u8, u8), SpfError> {
        let (rest, v6_len) = match arg.split_once("//") {
            Some((r, l)) => (r, Some(l)),
            None => (arg, None),
        };
        let (rest, v4_len) = match rest.rsplit_once('/') {
            Some((r, l)) => (r, Some(l)),
            None => (rest, None),
        };
        let len = |l: Option<&str>, max: u8| match l {
            None => Ok(max),
            Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max).ok_or_else(|| {
                self.term_error(term, format!("prefix length `/{l}` is not 0 to {max}"))
            }),
        };
        let target = match rest.strip_prefix(':') {
            Some(d) => self.domain_spec(term, d)?,
            None if rest.is_empty() => current.to_string(),
            None => return Err(self.term_error(term, "malformed mechanism")),
        };
        Ok((target, len(v4_len, 32)?, len(v6_len, 128)?))
    }

    /// The exchanges of `domain`'s MX records (RFC 7208 4.6.4: at most 10).
    fn mx_hosts(&self, term: &str, domain: &str) -> Result<Vec<String>, SpfError> {
        let answers = self.void_is_empty(self.dns.lookup(domain, RecordType::Mx))?;
        let hosts: Vec<String> = answers
            .into_iter()
            .filter_map(|a| match a {
                Answer::Mx(h) => Some(h.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        if hosts.len() > 10 {
            return Err(self.term_error(
                term,
                format!(
                    "{domain} has {} MX records (at most 10 are followed)",
                    hosts.len()
                ),
            ));
        }
        Ok(hosts)
    }

    /// A and AAAA addresses of `host` (none when it does not exist).
    fn addresses(&self, _term: &str, host: &str) -> Result<Vec<IpAddr>, SpfError> {
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::Aaaa] {
            for a in self.void_is_empty(self.dns.lookup(host, rtype))? {
                if let Answer::Addr(ip) = a {
                    out.push(ip);
                }
            }
        }
        Ok(out)
    }

    /// A name that does not exist gives no addresses (a "void lookup"); other failures are
    /// errors: the ranges would be incomplete.
    fn void_is_empty(&self, r: Result<Vec<Answer>, DnsError>) -> Result<Vec<Answer>, SpfError> {
        match r {
            Ok(a) => Ok(a),
            Err(DnsError::NxDomain { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.error(e.into())),
        }
    }
}

/// Whether a TXT record is an SPF record: `v=spf1` alone or followed by a space.
fn is_spf(txt: &str) -> bool {
    let t = txt.as_bytes();
    t.len() >= 6 && t[..6].eq_ignore_ascii_case(b"v=spf1") && (t.len() == 6 || t[6] == b' ')
}

/// `name=value`, when the term is a modifier (a name of letters, digits, `-`, `_`, `.`).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    (!name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
    .then_some((name, value))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// DNS answers from a table; names not in it do not exist.
    #[derive(Default)]
    struct Table(HashMap<(String, u16), Vec<Answer>>);

    impl Table {
        fn txt(mut self, name: &str, text: &str) -> Self {
            self.0
                .entry((name.into(), RecordType::Txt as u16))
                .or_default()
                .push(Answer::Txt(text.into()));
            self
        }
        fn addr(mut self, name: &str, ip: &str) -> Self {
            let ip: IpAddr = ip.parse().unwrap();
            let t = if ip.is_ipv4() {
                RecordType::A
            } else {
                RecordType::Aaaa
            };
            self.0
                .entry((name.into(), t as u16))
                .or_default()
                .push(Answer::Addr(ip));
            self
        }
        fn mx(mut self, name: &str, host: &str) -> Self {
            self.0
                .entry((name.into(), RecordType::Mx as u16))
                .or_default()
                .push(Answer::Mx(host.into()));
            self
        }
    }

    impl Lookup for Table {
        fn lookup(&self, name: &str, rtype: RecordType) -> Result<Vec<Answer>, DnsError> {
            if let Some(a) = self.0.get(&(name.to_string(), rtype as u16)) {
                return Ok(a.clone());
            }
            if self.0.keys().any(|(n, _)| n == name) {
                return Ok(Vec::new());
            }
            Err(DnsError::NxDomain { name: name.into() })
        }
    }

    fn nets(r: &BTreeSet<IpNet>) -> Vec<String> {
        r.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn follows_includes_redirects_a_and_mx() {
        let dns = Table::default()
            .txt(
                "provider.test",
                "v=spf1 include:_spf1.provider.test include:_spf2.provider.test ~all",
            )
            .txt("provider.test", "google-site-verification=abc")
            .txt(
                "_spf1.provider.test",
                "v=spf1 ip4:198.18.1.0/24 ip6:2001:db8:1::/48 -ip4:198.18.9.9 ?all",
            )
            .txt(
                "_spf2.provider.test",
                "v=spf1 a:relay.provider.test/28 mx//64 redirect=_spf3.provider.test",
            )
            .addr("relay.provider.test", "198.18.2.77")
            .mx("_spf2.provider.test", "mx.provider.test")
            .addr("mx.provider.test", "198.18.3.1")
            .addr("mx.provider.test", "2001:db8:3::25")
            .txt(
                "_spf3.provider.test",
                "V=SPF1 ip4:198.18.4.5 exists:%{i}.bl.test exp=explain.test",
            );
        let r = ranges("Provider.test.", &dns, 10).unwrap();
        assert_eq!(
            nets(&r),
            [
                "198.18.1.0/24",
                "198.18.2.64/28",
                "198.18.3.1/32",
                "198.18.4.5/32",
                "2001:db8:1::/48",
                "2001:db8:3::/64"
            ]
        );
    }

    #[test]
    fn redirect_is_ignored_when_the_record_has_all() {
        let dns = Table::default().txt("a.test", "v=spf1 ip4:198.18.0.1 redirect=b.test -all");
        assert_eq!(
            nets(&ranges("a.test", &dns, 10).unwrap()),
            ["198.18.0.1/32"]
        );
    }

    #[test]
    fn loops_and_lookup_limits_are_errors() {
        let dns = Table::default()
            .txt("a.test", "v=spf1 include:b.test -all")
            .txt("b.test", "v=spf1 include:a.test -all");
        let e = ranges("a.test", &dns, 10).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`a.test` includes a record that is already being read: a loop (in the SPF record of a.test → b.test)"
        );
        let mut dns = Table::default();
        for i in 0..12 {
            dns = dns.txt(
                &format!("d{i}.test"),
                &format!("v=spf1 include:d{}.test", i + 1),
            );
        }
        dns = dns.txt("d12.test", "v=spf1 ip4:198.18.0.1");
        let e = ranges("d0.test", &dns, 10).unwrap_err();
        assert!(
            matches!(*e.problem, Problem::Limit { limit: 10, .. }),
            "{e}"
        );
        assert_eq!(e.chain.len(), 11);
        assert!(ranges("d0.test", &dns, 12).is_ok());
    }

    #[test]
    fn bad_records_name_the_record_and_term() {
        let cases = [
            (
                "v=spf1 ip4:198.18.0.300",
                "`ip4:198.18.0.300`: `198.18.0.300` is not an IPv4 address",
            ),
            (
                "v=spf1 ip4:198.18.0.0/33",
                "`ip4:198.18.0.0/33`: prefix length `/33` is not 0 to 32",
            ),
            (
                "v=spf1 ip6:198.18.0.1",
                "`ip6:198.18.0.1`: `198.18.0.1` is not an IPv6 address",
            ),
            ("v=spf1 +all", "`+all`: passes every address"),
            (
                "v=spf1 include:%{d}.test",
                "`include:%{d}.test`: SPF macros",
            ),
            ("v=spf1 frobnicate:x", "`frobnicate:x`: unknown mechanism"),
            ("v=spf1 include", "`include`: include needs a domain"),
        ];
        for (record, expected) in cases {
            let dns = Table::default().txt("p.test", record);
            let e = ranges("p.test", &dns, 10).unwrap_err().to_string();
            assert!(
                e.starts_with(expected) && e.ends_with("(in the SPF record of p.test)"),
                "{record}: {e}"
            );
        }
        let dns = Table::default().txt("p.test", "v=spf1 include:gone.test");
        let e = ranges("p.test", &dns, 10).unwrap_err().to_string();
        assert_eq!(
            e,
            "gone.test does not exist (NXDOMAIN) (in the SPF record of p.test → gone.test)"
        );
        let dns = Table::default().txt("p.test", "not spf");
        assert!(
            ranges("p.test", &dns, 10)
                .unwrap_err()
                .to_string()
                .starts_with("p.test has no SPF record")
        );
        let dns = Table::default()
            .txt("p.test", "v=spf1 -all")
            .txt("p.test", "v=spf1 ip4:198.18.0.1");
        assert!(
            ranges("p.test", &dns, 10)
                .unwrap_err()
                .to_string()
                .starts_with("p.test has 2 SPF records")
        );
    }

    #[test]
    fn a_host_that_does_not_exist_gives_nothing() {
        let dns = Table::default().txt("p.test", "v=spf1 a:gone.test mx ip4:198.18.0.1");
        assert_eq!(
            nets(&ranges("p.test", &dns, 10).unwrap()),
            ["198.18.0.1/32"]
        );
    }

    #[test]
    fn spf_records_are_recognized() {
        assert!(is_spf("v=spf1"));
        assert!(is_spf("v=spf1 -all"));
        assert!(!is_spf("v=spf10 -all"));
        assert!(!is_spf("v=DMARC1"));
    }
}
