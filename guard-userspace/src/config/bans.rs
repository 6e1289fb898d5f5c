//! The `[bans]` section: banning password guessers and address harvesters at the NIC, from
//! what Postfix and Dovecot see. Where the events come from (the journal, log files, Dovecot's
//! authentication policy requests), the rules that turn them into bans, and the limits around
//! them. Every rule has a default that works; `[bans.rules.NAME]` changes one (or adds one).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{ConfigError, Place, durations::parse_duration, int};

/// What an event reports, as rules name it (`event = "auth"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A failed authentication: Postfix SASL (submission, SMTP AUTH), a Dovecot login that
    /// failed to authenticate, or Dovecot's policy report of a failure.
    #[serde(rename = "auth")]
    AuthFailed,
    /// A recipient refused as unknown (`550 5.1.1`): directory harvesting, one at a time.
    #[serde(rename = "harvest")]
    UnknownRecipient,
    /// A recipient refused because the server does not relay for the client.
    #[serde(rename = "relay")]
    RelayDenied,
    /// postscreen: the client spoke before its turn, or a DNSBL ranked it over the threshold.
    Postscreen,
}

impl EventKind {
    pub const ALL: [EventKind; 4] = [
        EventKind::AuthFailed,
        EventKind::UnknownRecipient,
        EventKind::RelayDenied,
        EventKind::Postscreen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventKind::AuthFailed => "auth",
            EventKind::UnknownRecipient => "harvest",
            EventKind::RelayDenied => "relay",
            EventKind::Postscreen => "postscreen",
        }
    }
}

/// One rule: `threshold` events of `kind` (or distinct recipients) from one source, or one
/// prefix of `prefix_v4`/`prefix_v6` bits, within `window` seconds ban it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    /// The rule's name: the ban's rule in `block list`, the logs and the metrics.
    pub name: String,
    pub kind: EventKind,
    /// 0 turns the rule off.
    pub threshold: u32,
    pub window: u64,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Count distinct recipients rather than events (harvesting).
    pub distinct: bool,
    /// Ban lengths in seconds for the first offence, the second, ...; the last repeats.
    pub escalation: Vec<u64>,
}

/// Every rule, and the limits around them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BanRules {
    pub rules: Vec<Rule>,
    /// New bans a minute at most; more are counted as capped.
    pub max_per_minute: u32,
    /// Bans in force at most.
    pub max_active: u32,
    /// An offender's escalation is forgotten this long after its last ban ended.
    pub forget_after: u64,
    /// Sources and prefixes whose counts are kept at most (the least recently seen go first).
    pub max_tracked: usize,
}

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

/// The rules when the configuration changes none. A typo or two by a real user never bans.
fn default_rules() -> Vec<Rule> {
    let rule = |name: &str, kind, threshold, v4, v6, distinct, escalation: &[u64]| Rule {
        name: name.to_string(),
        kind,
        threshold,
        window: 10 * MINUTE,
        prefix_v4: v4,
        prefix_v6: v6,
        distinct,
        escalation: escalation.to_vec(),
    };
    let escalation = [10 * MINUTE, HOUR, DAY];
    vec![
        rule(
            "auth",
            EventKind::AuthFailed,
            5,
            32,
            128,
            false,
            &escalation,
        ),
        // Botnets rotate neighbours: many failures from one /24 or /64 ban the prefix.
        rule(
            "auth_net",
            EventKind::AuthFailed,
            20,
            24,
            64,
            false,
            &escalation,
        ),
        rule(
            "harvest",
            EventKind::UnknownRecipient,
            10,
            32,
            128,
            true,
            &[HOUR, DAY],
        ),
        // Off unless the configuration gives them a threshold.
        rule(
            "relay",
            EventKind::RelayDenied,
            0,
            32,
            128,
            false,
            &escalation,
        ),
        rule(
            "postscreen",
            EventKind::Postscreen,
            0,
            32,
            128,
            false,
            &escalation,
        ),
    ]
}

impl Default for BanRules {
    fn default() -> Self {
        BanRules {
            rules: default_rules(),
            max_per_minute: 600,
            max_active: 100_000,
            forget_after: 7 * DAY,
            max_tracked: 200_000,
        }
    }
}

/// Where Dovecot's authentication policy requests are answered by default.
pub const DEFAULT_POLICY_LISTEN: &str = "127.0.0.1:8790";

/// The `[bans]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Bans {
    /// Off unless `enabled = true`.
    pub enabled: bool,
    /// Follow the systemd journal's mail facility.
    pub journal: bool,
    /// Log files followed (Postfix's `maillog_file`, rsyslog's mail.log).
    pub files: Vec<PathBuf>,
    /// Where Dovecot's `auth_policy_server_url` requests are answered; `None`: not at all.
    /// When set, authentication failures are taken from Dovecot's reports only (they cover
    /// Postfix's SASL through Dovecot too), not from log lines, so that none counts twice.
    pub policy_listen: Option<SocketAddr>,
    /// Rules fire and are counted, nothing is banned (the global `monitor` does this too).
    pub monitor: bool,
    pub rules: BanRules,
}

impl Bans {
    /// Whether authentication failures come from Dovecot's policy reports (not the logs).
    pub fn auth_from_policy(&self) -> bool {
        self.policy_listen.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBans {
    enabled: Option<bool>,
    journal: Option<bool>,
    files: Option<Vec<Spanned<String>>>,
    policy_listen: Option<Spanned<String>>,
    monitor: Option<bool>,
    max_per_minute: Option<Spanned<i64>>,
    max_active: Option<Spanned<i64>>,
    forget_after: Option<Spanned<String>>,
    max_tracked: Option<Spanned<i64>>,
    rules: Option<BTreeMap<String, Spanned<RawRule>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    event: Option<EventKind>,
    threshold: Option<Spanned<i64>>,
    window: Option<Spanned<String>>,
    prefix_v4: Option<Spanned<i64>>,
    prefix_v6: Option<Spanned<i64>>,
    distinct_recipients: Option<bool>,
    ban: Option<Vec<Spanned<String>>>,
}

fn duration(
    v: &Option<Spanned<String>>,
    key: &str,
    default: u64,
    place: &Place,
) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            parse_duration(s.get_ref()).map_err(|m| place.error(s.span(), Some(key.into()), m))
        }
    }
}

pub(crate) fn validate(raw: Option<RawBans>, place: &Place) -> Result<Bans, ConfigError> {
    let d = Bans::default();
    let Some(raw) = raw else { return Ok(d) };
    let mut files = Vec::new();
    for (i, f) in raw.files.iter().flatten().enumerate() {
        let path = PathBuf::from(f.get_ref());
        if !path.is_absolute() {
            return Err(place.error(
                f.span(),
                Some(format!("bans.files[{i}]")),
                format!("`{}` is not an absolute path", f.get_ref()),
            ));
        }
        if files.contains(&path) {
            return Err(place.error(
                f.span(),
                Some(format!("bans.files[{i}]")),
                format!("`{}` is listed twice", f.get_ref()),
            ));
        }
        files.push(path);
    }
    let policy_listen = match &raw.policy_listen {
        None => None,
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => Some(s.get_ref().parse::<SocketAddr>().map_err(|_| {
            place.error(
                s.span(),
                Some("bans.policy_listen".into()),
                format!(
                    "`{}` is not an address and port such as {DEFAULT_POLICY_LISTEN}",
                    s.get_ref()
                ),
            )
        })?),
    };
    let limits = &d.rules;
    let mut rules = BanRules {
        rules: limits.rules.clone(),
        max_per_minute: int(
            &raw.max_per_minute,
            "bans.max_per_minute",
            1..=1_000_000,
            limits.max_per_minute as i64,
            place,
        )? as u32,
        max_active: int(
            &raw.max_active,
            "bans.max_active",
            1..=guard_common::LIST_MAX_ENTRIES as i64 / 2,
            limits.max_active as i64,
            place,
        )? as u32,
        forget_after: duration(
            &raw.forget_after,
            "bans.forget_after",
            limits.forget_after,
            place,
        )?,
        max_tracked: int(
            &raw.max_tracked,
            "bans.max_tracked",
            1000..=10_000_000,
            limits.max_tracked as i64,
            place,
        )? as usize,
    };
    for (name, spanned) in raw.rules.into_iter().flatten() {
        let key = format!("bans.rules.{name}");
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(place.error(
                spanned.span(),
                Some(key),
                format!(
                    "`{name}` is not a rule name (lower-case letters, digits and _, at most 32)"
                ),
            ));
        }
        let raw_rule = spanned.get_ref();
        let base = rules.rules.iter().find(|r| r.name == name).cloned();
        let kind = match (raw_rule.event, &base) {
            (Some(k), _) => k,
            (None, Some(b)) => b.kind,
            (None, None) => {
                return Err(place.error(
                    spanned.span(),
                    Some(key),
                    "a new rule needs `event` (auth, harvest, relay or postscreen)".into(),
                ));
            }
        };
        let base = base.unwrap_or(Rule {
            name: name.clone(),
            kind,
            threshold: 0,
            window: 10 * MINUTE,
            prefix_v4: 32,
            prefix_v6: 128,
            distinct: kind == EventKind::UnknownRecipient,
            escalation: vec![10 * MINUTE, HOUR, DAY],
        });
        let threshold = int(
            &raw_rule.threshold,
            &format!("{key}.threshold"),
            0..=100_000,
            base.threshold as i64,
            place,
        )? as u32;
        let mut escalation = Vec::new();
        for (i, step) in raw_rule.ban.iter().flatten().enumerate() {
            escalation.push(
                parse_duration(step.get_ref())
                    .map_err(|m| place.error(step.span(), Some(format!("{key}.ban[{i}]")), m))?,
            );
        }
        if raw_rule.ban.as_ref().is_some_and(|b| b.is_empty()) {
            return Err(place.error(
                spanned.span(),
                Some(format!("{key}.ban")),
                "`ban` needs at least one duration (the first offence's)".into(),
            ));
        }
        let rule = Rule {
            name: name.clone(),
            kind,
            threshold,
            window: duration(
                &raw_rule.window,
                &format!("{key}.window"),
                base.window,
                place,
            )?,
            prefix_v4: int(
                &raw_rule.prefix_v4,
                &format!("{key}.prefix_v4"),
                8..=32,
                base.prefix_v4 as i64,
                place,
            )? as u8,
            prefix_v6: int(
                &raw_rule.prefix_v6,
                &format!("{key}.prefix_v6"),
                16..=128,
                base.prefix_v6 as i64,
                place,
            )? as u8,
            distinct: raw_rule.distinct_recipients.unwrap_or(base.distinct),
            escalation: if escalation.is_empty() {
                base.escalation
            } else {
                escalation
            },
        };
        if rule.distinct && rule.kind != EventKind::UnknownRecipient {
            return Err(place.error(
                spanned.span(),
                Some(format!("{key}.distinct_recipients")),
                "only harvest events carry recipients to count".into(),
            ));
        }
        match rules.rules.iter_mut().find(|r| r.name == name) {
            Some(r) => *r = rule,
            None => rules.rules.push(rule),
        }
    }
    Ok(Bans {
        enabled: raw.enabled.unwrap_or(d.enabled),
        journal: raw.journal.unwrap_or(d.journal),
        files,
        policy_listen,
        monitor: raw.monitor.unwrap_or(d.monitor),
        rules,
    })
}
