//! The `[budgets]` section of the configuration: per-source budgets for new connections to
//! mail ports, by service class, and the global limits around them.

use serde::Deserialize;
use toml::Spanned;

use crate::config::{ConfigError, Place, int, values::seconds};

/// What happens to a connection over budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Drop the SYN: the client retries and eventually gives up.
    Drop,
    /// Answer the SYN with a TCP RST: the client fails at once.
    Reject,
}

/// When XDP answers a SYN with a SYN cookie (`budgets.syn_cookies`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SynCookies {
    /// `UnderFlood` on kernels where XDP makes cookies from the SYN alone (Linux 6.0, which
    /// leaves `net.ipv4.tcp_syncookies` and the known senders' SYN queue alone), `Off` before
    /// (where cookies need the setting at 2 during the flood, which costs the known senders).
    /// The default.
    Auto,
    /// Never: over the SYN ceiling, a SYN from a source never seen completing a connection is
    /// dropped.
    Off,
    /// Instead of the ceiling's drop: such a SYN is answered with a cookie.
    UnderFlood,
    /// Every SYN from such a source, ceiling or not.
    Always,
}

impl SynCookies {
    /// `UnderFlood` with no ceiling to spend (`syn_ceiling` 0) is `Off`.
    fn without_a_ceiling(self, syn_ceiling: f64) -> SynCookies {
        match self {
            SynCookies::UnderFlood if syn_ceiling == 0.0 => SynCookies::Off,
            mode => mode,
        }
    }
}

/// The budget of one service class. `rate = 0` and `max_connections = 0` leave it unlimited.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ClassLimits {
    /// New connections per second per source (fractions allowed).
    pub rate: f64,
    /// New connections a source may open at once before the rate applies.
    pub burst: u32,
    /// Concurrent connections per source.
    pub max_connections: u32,
    pub action: Action,
}

impl ClassLimits {
    pub const UNLIMITED: ClassLimits = ClassLimits {
        rate: 0.0,
        burst: 1,
        max_connections: 0,
        action: Action::Drop,
    };

    pub fn is_unlimited(&self) -> bool {
        self.rate == 0.0 && self.max_connections == 0
    }
}

/// Budgets and their global limits.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Budgets {
    /// Bits of an IPv4 source that make one budget (32: each address).
    pub source_prefix_v4: u8,
    /// Bits of an IPv6 source that make one budget (64: each /64, as an attacker owns one).
    pub source_prefix_v6: u8,
    /// Slots of the rate table (two-way set-associative; of two, the source seen less recently
    /// is forgotten first).
    pub tracked_sources: u32,
    /// Concurrent connections counted (a source beyond fails open).
    pub tracked_connections: u32,
    /// SYNs per second to mail ports, over all CPUs, from sources never seen completing a
    /// connection (spoofed floods); 0 turns the ceiling off.
    pub syn_ceiling: f64,
    pub syn_ceiling_burst: u32,
    /// RSTs per second the `reject` action may send, over all CPUs.
    pub reject_limit: f64,
    /// SYN cookies answered in XDP for sources never seen completing a connection.
    pub syn_cookies: SynCookies,
    /// With `under_flood`: how long after the last SYN over the ceiling the flood counts as
    /// over (and `net.ipv4.tcp_syncookies` goes back to the operator's value), in seconds.
    pub syn_cookies_hold: u64,
    pub mx: ClassLimits,
    pub submission: ClassLimits,
    pub mailbox: ClassLimits,
}

impl Budgets {
    /// The SYN cookie mode in effect on a kernel that makes cookies from the SYN alone
    /// (`from_the_syn`) or not: `auto` resolved, and `under_flood` without a ceiling
    /// (`syn_ceiling = 0`), which never answers, off.
    pub fn cookies_in_effect(&self, from_the_syn: bool) -> SynCookies {
        match self.syn_cookies {
            SynCookies::Auto if from_the_syn => SynCookies::UnderFlood,
            SynCookies::Auto => SynCookies::Off,
            mode => mode,
        }
        .without_a_ceiling(self.syn_ceiling)
    }
}

impl Default for Budgets {
    fn default() -> Self {
        Budgets {
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            tracked_sources: guard_common::DEFAULT_TRACKED_SOURCES,
            tracked_connections: guard_common::DEFAULT_TRACKED_CONNECTIONS,
            syn_ceiling: 10_000.0,
            syn_ceiling_burst: 20_000,
            reject_limit: 100.0,
            syn_cookies: SynCookies::Auto,
            syn_cookies_hold: 60,
            // As generous as Postfix's own default per-client connection limit (50).
            mx: ClassLimits {
                rate: 20.0,
                burst: 60,
                max_connections: 50,
                action: Action::Drop,
            },
            submission: ClassLimits {
                rate: 10.0,
                burst: 30,
                max_connections: 50,
                action: Action::Drop,
            },
            // Mail clients behind one office NAT hold many IMAP connections: unlimited.
            mailbox: ClassLimits::UNLIMITED,
        }
    }
}

/// A TOML number: `rate = 20` and `rate = 0.5` both read as rates.
#[derive(Deserialize, Clone, Copy)]
#[serde(untagged)]
pub(crate) enum Number {
    Int(i64),
    Float(f64),
}

impl Number {
    fn value(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    source_prefix_v4: Option<Spanned<i64>>,
    source_prefix_v6: Option<Spanned<i64>>,
    tracked_sources: Option<Spanned<i64>>,
    tracked_connections: Option<Spanned<i64>>,
    syn_ceiling: Option<Spanned<Number>>,
    syn_ceiling_burst: Option<Spanned<i64>>,
    reject_limit: Option<Spanned<Number>>,
    syn_cookies: Option<SynCookies>,
    syn_cookies_hold: Option<Spanned<String>>,
    mx: Option<RawClass>,
    submission: Option<RawClass>,
    mailbox: Option<RawClass>,
    /// Moved to `[lists.trusted] cidrs`: named in the error so that old files are easy to fix.
    trusted: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClass {
    rate: Option<Spanned<Number>>,
    burst: Option<Spanned<i64>>,
    max_connections: Option<Spanned<i64>>,
    action: Option<Action>,
}

fn rate(
    v: &Option<Spanned<Number>>,
    key: &str,
    default: f64,
    place: &Place,
) -> Result<f64, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let r = s.get_ref().value();
            if r.is_finite() && (0.0..=10_000_000.0).contains(&r) {
                Ok(r)
            } else {
                Err(place.error(
                    s.span(),
                    Some(key.to_string()),
                    format!("{r} is not a rate per second (0 to 10000000; 0 means unlimited)"),
                ))
            }
        }
    }
}

fn class(
    raw: &Option<RawClass>,
    name: &str,
    default: ClassLimits,
    place: &Place,
) -> Result<ClassLimits, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let key = |k: &str| format!("budgets.{name}.{k}");
    let r = rate(&raw.rate, &key("rate"), default.rate, place)?;
    // Without an explicit burst, one second's worth (at least one).
    let default_burst = if raw.rate.is_some() {
        r.ceil().max(1.0) as i64
    } else {
        default.burst as i64
    };
    let burst = int(
        &raw.burst,
        &key("burst"),
        1..=1_000_000,
        default_burst,
        place,
    )? as u32;
    let max = int(
        &raw.max_connections,
        &key("max_connections"),
        0..=1_000_000,
        default.max_connections as i64,
        place,
    )? as u32;
    Ok(ClassLimits {
        rate: r,
        burst,
        max_connections: max,
        action: raw.action.unwrap_or(default.action),
    })
}

pub(crate) fn validate(raw: Option<RawBudgets>, place: &Place) -> Result<Budgets, ConfigError> {
    let d = Budgets::default();
    let Some(raw) = raw else { return Ok(d) };
    if let Some(t) = &raw.trusted {
        return Err(place.error(
            t.span(),
            Some("budgets.trusted".into()),
            "trusted sources moved to the `[lists.trusted]` section: write `cidrs = [...]` there"
                .into(),
        ));
    }
    Ok(Budgets {
        source_prefix_v4: int(
            &raw.source_prefix_v4,
            "budgets.source_prefix_v4",
            8..=32,
            32,
            place,
        )? as u8,
        source_prefix_v6: int(
            &raw.source_prefix_v6,
            "budgets.source_prefix_v6",
            16..=128,
            64,
            place,
        )? as u8,
        tracked_sources: int(
            &raw.tracked_sources,
            "budgets.tracked_sources",
            16..=16_777_216,
            d.tracked_sources as i64,
            place,
        )? as u32,
        tracked_connections: int(
            &raw.tracked_connections,
            "budgets.tracked_connections",
            16..=16_777_216,
            d.tracked_connections as i64,
            place,
        )? as u32,
        syn_ceiling: rate(
            &raw.syn_ceiling,
            "budgets.syn_ceiling",
            d.syn_ceiling,
            place,
        )?,
        syn_ceiling_burst: int(
            &raw.syn_ceiling_burst,
            "budgets.syn_ceiling_burst",
            1..=10_000_000,
            d.syn_ceiling_burst as i64,
            place,
        )? as u32,
        reject_limit: rate(
            &raw.reject_limit,
            "budgets.reject_limit",
            d.reject_limit,
            place,
        )?,
        syn_cookies: raw.syn_cookies.unwrap_or(d.syn_cookies),
        syn_cookies_hold: seconds(
            &raw.syn_cookies_hold,
            "budgets.syn_cookies_hold",
            1..=86_400,
            d.syn_cookies_hold,
            place,
        )?,
        mx: class(&raw.mx, "mx", d.mx, place)?,
        submission: class(&raw.submission, "submission", d.submission, place)?,
        mailbox: class(&raw.mailbox, "mailbox", d.mailbox, place)?,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    fn budgets(text: &str) -> Result<Budgets, String> {
        Config::parse(text, "t.toml")
            .map(|(c, _)| c.budgets)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_generous_and_mailbox_unlimited() {
        let b = budgets("").unwrap();
        assert_eq!(b, Budgets::default());
        assert_eq!(
            (b.mx.rate, b.mx.burst, b.mx.max_connections),
            (20.0, 60, 50)
        );
        assert!(b.mailbox.is_unlimited());
        assert_eq!((b.source_prefix_v4, b.source_prefix_v6), (32, 64));
    }

    #[test]
    fn full_section_parses() {
        let b = budgets(
            r#"
[budgets]
source_prefix_v4 = 24
source_prefix_v6 = 56
tracked_sources = 1000
tracked_connections = 2000
syn_ceiling = 500
syn_ceiling_burst = 50
reject_limit = 10.5

[budgets.mx]
rate = 0.5
max_connections = 3
action = "reject"

[budgets.mailbox]
max_connections = 200
"#,
        )
        .unwrap();
        assert_eq!((b.source_prefix_v4, b.source_prefix_v6), (24, 56));
        assert_eq!((b.tracked_sources, b.tracked_connections), (1000, 2000));
        assert_eq!(
            (b.syn_ceiling, b.syn_ceiling_burst, b.reject_limit),
            (500.0, 50, 10.5)
        );
        assert_eq!(
            b.mx,
            ClassLimits {
                rate: 0.5,
                burst: 1,
                max_connections: 3,
                action: Action::Reject
            }
        );
        assert_eq!(b.mailbox.max_connections, 200);
        assert_eq!(b.mailbox.rate, 0.0);
        assert_eq!(
            b.submission,
            Budgets::default().submission,
            "an absent class keeps its default"
        );
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let e = budgets("[budgets]\nsource_prefix_v6 = 129\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:2:20: `budgets.source_prefix_v6`: 129 is out of range (16 to 128)"
        );
        let e = budgets("[budgets.mx]\nrate = -1\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:2:8: `budgets.mx.rate`: -1 is not a rate per second"),
            "{e}"
        );
        let e = budgets("[budgets.submission]\nmax_connections = 1.5\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:19:"), "{e}");
        let e = budgets("[budgets.mx]\naction = \"bounce\"\n").unwrap_err();
        assert!(e.contains("drop") && e.contains("reject"), "{e}");
        let e = budgets("[budgets]\ntrusted = [\"198.18.0.0/16\"]\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:11: `budgets.trusted`: trusted sources moved to the `[lists.trusted]` section"), "{e}");
        let e = budgets("[budgets.imap]\nrate = 1\n").unwrap_err();
        assert!(e.contains("imap"), "{e}");
        let e = budgets("[budgets]\ntracked_sources = 0\n").unwrap_err();
        assert!(
            e.contains("`budgets.tracked_sources`: 0 is out of range"),
            "{e}"
        );
    }
}
