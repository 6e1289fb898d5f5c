//! CrowdSec decisions as the LAPI's decision stream gives them (`GET /v1/decisions/stream`:
//! `{"new": [...], "deleted": [...]}`, either list `null` when empty), checked one by one: a
//! decision mailguard cannot enforce is skipped and counted, one that makes no sense is skipped
//! with its place named; the rest are kept by id, and the block list takes the nets in force.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::crowdsec::{Crowdsec, Scope};

/// One ban decision mailguard enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub net: IpNet,
    /// Unix seconds at which it ends.
    pub until: u64,
    /// Who made it: `crowdsec` (a scenario), `cscli`, `CAPI`, `lists`, ...
    pub origin: String,
    pub scenario: String,
}

/// What one answer of the stream said.
#[derive(Debug, Default, PartialEq)]
pub struct StreamAnswer {
    /// New decisions mailguard enforces, by id.
    pub new: BTreeMap<i64, Decision>,
    /// Ids of deleted (or expired) decisions.
    pub deleted: Vec<i64>,
    /// Decisions not for mailguard: another type (captcha, ...), scope or origin.
    pub not_taken: usize,
    /// Decisions that make no sense, with their place (the first few of them).
    pub bad: Vec<String>,
    pub bad_count: usize,
}

/// The LAPI's answer could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the LAPI's answer is not a decision stream: {0}")]
pub struct Garbage(pub String);

/// The answer's lists, each decision kept as its text: one that does not read is skipped with
/// its place, the others still count.
#[derive(Deserialize)]
struct RawStream<'a> {
    #[serde(borrow)]
    new: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(borrow)]
    deleted: Option<Vec<&'a serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct RawDeleted {
    id: i64,
}

#[derive(Deserialize)]
struct RawDecision {
    id: i64,
    #[serde(default)]
    origin: String,
    #[serde(rename = "type")]
    kind: String,
    scope: String,
    value: String,
    duration: String,
    #[serde(default)]
    scenario: String,
}

/// Places of bad decisions kept for the log.
const BAD_KEPT: usize = 5;

/// Go's `time.Duration` text (`3h59m50.5s`, `-2m1s`, `350ms`) in whole seconds, rounded up;
/// negative for a decision already over.
pub fn go_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a duration");
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(0);
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_end == 0 {
            return Err(bad());
        }
        let number: f64 = rest[..number_end].parse().map_err(|_| bad())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_end] {
            "h" => 3600e9,
            "m" => 60e9,
            "s" => 1e9,
            "ms" => 1e6,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ns" => 1.0,
            _ => return Err(bad()),
        };
        nanos += number * unit;
        rest = &rest[unit_end..];
    }
    let seconds = (nanos / 1e9).ceil();
    if !seconds.is_finite() || seconds > 1e12 {
        return Err(bad());
    }
    Ok(if negative {
        -(seconds as i64)
    } else {
        seconds as i64
    })
}

/// The net a decision's value names: an address (scope Ip) or a CIDR range (Range); a range
/// with host bits set covers its network, as CrowdSec reads it. IPv4-mapped IPv6 is IPv4.
pub fn decision_net(scope: Scope, value: &str) -> Result<IpNet, String> {
    let unmapped = |a: IpAddr| match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    match scope {
        Scope::Ip => {
            let a: IpAddr = value
                .parse()
                .map_err(|_| format!("`{value}` is not an IP address"))?;
            Ok(IpNet::from(unmapped(a)))
        }
        Scope::Range => {
            let net: IpNet = value
                .parse()
                .map_err(|_| format!("`{value}` is not a CIDR range"))?;
            let net = net.trunc();
            Ok(match net {
                IpNet::V6(v6) if v6.prefix_len() >= 96 && v6.addr().to_ipv4_mapped().is_some() => {
                    let v4 = v6.addr().to_ipv4_mapped().expect("checked");
                    IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).expect("at most 32")
                }
                other => other,
            })
        }
    }
}

/// Reads one answer of the stream; `now`: Unix seconds, from which durations count.
pub fn parse_stream(body: &[u8], config: &Crowdsec, now: u64) -> Result<StreamAnswer, Garbage> {
    let raw: RawStream = serde_json::from_slice(body).map_err(|e| Garbage(e.to_string()))?;
    let mut answer = StreamAnswer::default();
    let bad = |answer: &mut StreamAnswer, place: String, problem: String| {
        answer.bad_count += 1;
        if answer.bad.len() < BAD_KEPT {
            answer.bad.push(format!("{place}: {problem}"));
        }
    };
    for (i, v) in raw.deleted.into_iter().flatten().enumerate() {
        match serde_json::from_str::<RawDeleted>(v.get()) {
            Ok(d) => answer.deleted.push(d.id),
            Err(_) => bad(
                &mut answer,
                format!("deleted[{i}]"),
                "no numeric `id`".into(),
            ),
        }
    }
    for (i, v) in raw.new.into_iter().flatten().enumerate() {
        let place = || format!("new[{i}]");
        let d: RawDecision = match serde_json::from_str(v.get()) {
            Ok(d) => d,
            Err(e) => {
                bad(&mut answer, place(), e.to_string());
                continue;
            }
        };
        let scope = match d.scope.to_ascii_lowercase().as_str() {
            "ip" => Scope::Ip,
            "range" => Scope::Range,
            _ => {
                answer.not_taken += 1;
                continue;
            }
        };
        if !d.kind.eq_ignore_ascii_case("ban")
            || !config.scopes.contains(&scope)
            || (!config.origins.is_empty() && !config.origins.contains(&d.origin))
        {
            answer.not_taken += 1;
            continue;
        }
        let net = match decision_net(scope, &d.value) {
            Ok(n) => n,
            Err(m) => {
                bad(&mut answer, format!("{}.value", place()), m);
                continue;
            }
        };
        let seconds = match go_duration(&d.duration) {
            Ok(s) => s,
            Err(m) => {
                bad(&mut answer, format!("{}.duration", place()), m);
                continue;
            }
        };
        if seconds <= 0 {
            // Already over: nothing to enforce.
            answer.deleted.push(d.id);
            continue;
        }
        answer.new.insert(
            d.id,
            Decision {
                net,
                until: now.saturating_add(seconds as u64),
                origin: d.origin,
                scenario: d.scenario,
            },
        );
    }
    Ok(answer)
}

/// The decisions in force, by id (saved with the lists' state, so that a restart while the
/// LAPI is away keeps them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecisionSet {
    pub decisions: BTreeMap<i64, Decision>,
}

impl DecisionSet {
    pub fn path(state_dir: &std::path::Path) -> std::path::PathBuf {
        state_dir.join("crowdsec.json")
    }

    /// The saved set, or an empty one when there is none yet.
    pub fn load(
        state_dir: &std::path::Path,
    ) -> Result<DecisionSet, crate::feeds::saved::ListError> {
        crate::feeds::saved::load_json(DecisionSet::path(state_dir))
    }

    /// Saves atomically (a crash leaves the old or the new version, never half of one).
    pub fn save(&self, state_dir: &std::path::Path) -> Result<(), crate::feeds::saved::ListError> {
        let bytes = serde_json::to_vec(self).expect("decisions serialize");
        crate::feeds::saved::save_atomically(state_dir, &DecisionSet::path(state_dir), &bytes)
    }

    /// Applies an answer: a full one (`startup=true`) replaces the set, a delta changes it.
    pub fn apply(&mut self, answer: &StreamAnswer, full: bool) {
        if full {
            self.decisions.clear();
        }
        for id in &answer.deleted {
            self.decisions.remove(id);
        }
        self.decisions
            .extend(answer.new.iter().map(|(id, d)| (*id, d.clone())));
    }

    /// Forgets the decisions over at `now`; true when any was.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.decisions.len();
        self.decisions.retain(|_, d| d.until > now);
        self.decisions.len() != before
    }

    /// Every net in force at `now`, with the latest end of its decisions and their origins.
    pub fn in_force(&self, now: u64) -> BTreeMap<IpNet, (u64, Vec<String>)> {
        let mut out: BTreeMap<IpNet, (u64, Vec<String>)> = BTreeMap::new();
        for d in self.decisions.values().filter(|d| d.until > now) {
            let e = out.entry(d.net).or_default();
            e.0 = e.0.max(d.until);
            if !e.1.contains(&d.origin) {
                e.1.push(d.origin.clone());
            }
        }
        out
    }

    /// Decisions in force by origin.
    pub fn by_origin(&self, now: u64) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for d in self.decisions.values().filter(|d| d.until > now) {
            *out.entry(d.origin.clone()).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Crowdsec {
        Crowdsec::default()
    }

    #[test]
    fn go_durations_round_up_to_seconds() {
        assert_eq!(go_duration("59m59.755143176s"), Ok(3600));
        assert_eq!(go_duration("1h59m59.7s"), Ok(7200));
        assert_eq!(go_duration("167h0m0s"), Ok(167 * 3600));
        assert_eq!(go_duration("350ms"), Ok(1));
        assert_eq!(go_duration("-2m1.5s"), Ok(-122));
        assert_eq!(go_duration("0"), Ok(0));
        assert_eq!(go_duration("12µs"), Ok(1));
        for bad in ["", "h", "5", "5d", "1h-2m", "--1s", "1..2s"] {
            assert!(go_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_become_nets() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        assert_eq!(
            decision_net(Scope::Ip, "198.18.5.5"),
            Ok(n("198.18.5.5/32"))
        );
        assert_eq!(
            decision_net(Scope::Ip, "2001:db8::66"),
            Ok(n("2001:db8::66/128"))
        );
        assert_eq!(
            decision_net(Scope::Ip, "::ffff:198.18.5.5"),
            Ok(n("198.18.5.5/32"))
        );
        assert_eq!(
            decision_net(Scope::Range, "198.18.5.77/24"),
            Ok(n("198.18.5.0/24"))
        );
        assert_eq!(
            decision_net(Scope::Range, "::ffff:198.18.5.0/120"),
            Ok(n("198.18.5.0/24"))
        );
        assert_eq!(
            decision_net(Scope::Range, "2001:db8:66::/48"),
            Ok(n("2001:db8:66::/48"))
        );
        assert!(decision_net(Scope::Ip, "198.18.5.0/24").is_err());
        assert!(decision_net(Scope::Range, "example.org").is_err());
    }

    #[test]
    fn a_stream_answer_is_read_decision_by_decision() {
        let body = br#"{"deleted":[{"id":7,"value":"198.18.9.9"}],"new":[
            {"duration":"59m59.7s","id":1,"origin":"cscli","scenario":"test","scope":"Ip","type":"ban","value":"198.18.5.5"},
            {"duration":"1h","id":2,"origin":"crowdsec","scenario":"ssh-bf","scope":"Range","type":"ban","value":"2001:db8:66::/48"},
            {"duration":"1h","id":3,"origin":"crowdsec","scope":"Ip","type":"captcha","value":"198.18.5.6"},
            {"duration":"1h","id":4,"origin":"crowdsec","scope":"Country","type":"ban","value":"XX"},
            {"duration":"1h","id":5,"origin":"crowdsec","scope":"Ip","type":"ban","value":"198.18.5"},
            {"duration":"soon","id":6,"origin":"crowdsec","scope":"Ip","type":"ban","value":"198.18.5.8"},
            {"duration":"-1s","id":8,"origin":"crowdsec","scope":"Ip","type":"ban","value":"198.18.5.9"},
            {"id":9}
        ]}"#;
        let a = parse_stream(body, &config(), 1000).expect("a stream");
        assert_eq!(a.new.len(), 2);
        assert_eq!(a.new[&1].until, 4600);
        assert_eq!(a.new[&1].net, "198.18.5.5/32".parse::<IpNet>().unwrap());
        assert_eq!(a.new[&2].origin, "crowdsec");
        assert_eq!(a.deleted, vec![7, 8]);
        assert_eq!(a.not_taken, 2);
        assert_eq!(a.bad_count, 3);
        assert!(a.bad[0].starts_with("new[4].value: `198.18.5` is not an IP address"));
        assert!(a.bad[1].starts_with("new[5].duration: `soon` is not a duration"));
        assert!(a.bad[2].starts_with("new[7]: missing field"), "{:?}", a.bad);
        let empty = parse_stream(br#"{"deleted":null,"new":null}"#, &config(), 0).unwrap();
        assert_eq!(empty, StreamAnswer::default());
        assert!(parse_stream(b"<html>502</html>", &config(), 0).is_err());
        assert!(parse_stream(b"[1,2]", &config(), 0).is_err());
    }

    #[test]
    fn scopes_and_origins_filter() {
        let body = br#"{"new":[
            {"duration":"1h","id":1,"origin":"cscli","scope":"Ip","type":"ban","value":"198.18.5.5"},
            {"duration":"1h","id":2,"origin":"CAPI","scope":"Range","type":"ban","value":"198.18.6.0/24"}
        ]}"#;
        let mut c = config();
        c.origins = vec!["cscli".into()];
        assert_eq!(parse_stream(body, &c, 0).unwrap().new.len(), 1);
        let mut c = config();
        c.scopes = vec![Scope::Range];
        let a = parse_stream(body, &c, 0).unwrap();
        assert_eq!(a.new.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn the_set_follows_full_answers_and_deltas() {
        let d = |net: &str, until, origin: &str| Decision {
            net: net.parse().unwrap(),
            until,
            origin: origin.into(),
            scenario: String::new(),
        };
        let mut set = DecisionSet::default();
        let full = StreamAnswer {
            new: BTreeMap::from([
                (1, d("198.18.5.5/32", 100, "cscli")),
                (2, d("198.18.5.5/32", 200, "crowdsec")),
                (3, d("2001:db8:66::/48", 50, "crowdsec")),
            ]),
            ..StreamAnswer::default()
        };
        set.apply(&full, true);
        let f = set.in_force(10);
        assert_eq!(f.len(), 2);
        assert_eq!(f[&"198.18.5.5/32".parse().unwrap()].0, 200);
        assert_eq!(set.by_origin(10)["crowdsec"], 2);
        set.apply(
            &StreamAnswer {
                deleted: vec![2],
                ..StreamAnswer::default()
            },
            false,
        );
        assert_eq!(set.in_force(10)[&"198.18.5.5/32".parse().unwrap()].0, 100);
        assert!(set.expire(60));
        assert_eq!(set.decisions.len(), 1);
        set.apply(&StreamAnswer::default(), true);
        assert!(set.decisions.is_empty(), "a full answer replaces the set");
    }
}
