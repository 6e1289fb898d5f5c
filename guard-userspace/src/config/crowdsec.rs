//! The `[crowdsec]` section: mailguard as a bouncer of a CrowdSec Local API (LAPI). It reads
//! the LAPI's decision stream and enforces its `ban` decisions on addresses and ranges as block
//! list entries (origin `crowdsec`); with a machine name, it also pushes its own bans to the LAPI
//! as alerts, so that every host of the fleet blocks them. The bouncer key and the machine's
//! password are read from files, never from this configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::config::{ConfigError, Place, values::seconds};

/// A decision scope the bouncer can enforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One address (`cscli decisions add --ip`).
    Ip,
    /// A CIDR range (`cscli decisions add --range`).
    Range,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Ip => "ip",
            Scope::Range => "range",
        }
    }
}

/// Where CrowdSec's Local API listens by default.
pub const DEFAULT_LAPI: &str = "http://127.0.0.1:8080";
pub const DEFAULT_KEY_FILE: &str = "/etc/mailguard/crowdsec.key";
pub const DEFAULT_PASSWORD_FILE: &str = "/etc/mailguard/crowdsec-machine.password";

/// The `[crowdsec]` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Crowdsec {
    /// Off unless `enabled = true`.
    pub enabled: bool,
    /// The LAPI's base URL (`http://127.0.0.1:8080/`; `https://` with `ca_file` for TLS).
    pub lapi_url: String,
    /// The file holding the bouncer key (`cscli bouncers add NAME`), readable by mailguard only.
    pub bouncer_key_file: PathBuf,
    /// A CA certificate (PEM) the LAPI's TLS certificate must chain to, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// Seconds between two reads of the decision stream.
    pub poll_interval: u64,
    /// Seconds between two full reads (the whole decision set, catching anything missed).
    pub resync_interval: u64,
    /// Seconds a request may take.
    pub timeout: u64,
    /// The scopes taken (both by default).
    pub scopes: Vec<Scope>,
    /// The origins taken (`crowdsec`, `cscli`, `CAPI`, `lists`, ...); empty: every origin.
    pub origins: Vec<String>,
    /// The agent: mailguard's own bans pushed to the LAPI as alerts with decisions, as this
    /// machine (`cscli machines add`); empty: not pushed.
    pub machine_id: String,
    /// The file holding the machine's password.
    pub machine_password_file: PathBuf,
    /// The ban rules whose bans are pushed (every rule by default).
    pub share: Vec<String>,
    /// Sources the budgets refused (over their rate or their connection cap) at least this many
    /// times within `REFUSAL_WINDOW` are pushed too; 0: they are not.
    pub share_refused: u32,
    /// How long the LAPI's decision on such a source lasts, in seconds.
    pub share_refused_for: u64,
}

/// The window `share_refused` counts refusals in, in seconds (the daemon reads the sources'
/// refusal counts this often).
pub const REFUSAL_WINDOW: u64 = 5;

impl Crowdsec {
    /// Whether mailguard's bans are pushed.
    pub fn agent(&self) -> bool {
        self.enabled && !self.machine_id.is_empty()
    }

    /// Whether bans of `rule` are pushed.
    pub fn shares(&self, rule: &str) -> bool {
        self.agent() && (self.share.is_empty() || self.share.iter().any(|r| r == rule))
    }
}

impl Default for Crowdsec {
    fn default() -> Self {
        Crowdsec {
            enabled: false,
            lapi_url: DEFAULT_LAPI.into(),
            bouncer_key_file: PathBuf::from(DEFAULT_KEY_FILE),
            ca_file: None,
            poll_interval: 10,
            resync_interval: 3600,
            timeout: 10,
            scopes: vec![Scope::Ip, Scope::Range],
            origins: Vec::new(),
            machine_id: String::new(),
            machine_password_file: PathBuf::from(DEFAULT_PASSWORD_FILE),
            share: Vec::new(),
            share_refused: 0,
            share_refused_for: 3600,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCrowdsec {
    enabled: Option<bool>,
    lapi_url: Option<Spanned<String>>,
    bouncer_key_file: Option<Spanned<String>>,
    ca_file: Option<Spanned<String>>,
    poll_interval: Option<Spanned<String>>,
    resync_interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    scopes: Option<Vec<Spanned<String>>>,
    origins: Option<Vec<Spanned<String>>>,
    machine_id: Option<Spanned<String>>,
    machine_password_file: Option<Spanned<String>>,
    share: Option<Vec<Spanned<String>>>,
    share_refused: Option<Spanned<i64>>,
    share_refused_for: Option<Spanned<String>>,
}

fn absolute(s: &Spanned<String>, key: &str, place: &Place) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(s.get_ref());
    if !path.is_absolute() {
        return Err(place.error(
            s.span(),
            Some(key.into()),
            format!("`{}` is not an absolute path", s.get_ref()),
        ));
    }
    Ok(path)
}

pub(crate) fn validate(
    raw: Option<Spanned<RawCrowdsec>>,
    place: &Place,
    rules: &crate::config::bans::BanRules,
) -> Result<Crowdsec, ConfigError> {
    let d = Crowdsec::default();
    let Some(spanned) = raw else { return Ok(d) };
    let whole = spanned.span();
    let raw = spanned.into_inner();
    let enabled = raw.enabled.unwrap_or(false);
    let lapi_url = match &raw.lapi_url {
        None => d.lapi_url.clone(),
        Some(s) => {
            let url = s.get_ref().trim_end_matches('/').to_string();
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            if !rest.is_some_and(|r| !r.is_empty() && !r.contains(['/', '?', '#', ' '])) {
                return Err(place.error(
                    s.span(),
                    Some("crowdsec.lapi_url".into()),
                    format!(
                        "`{}` is not a LAPI address such as http://127.0.0.1:8080 (scheme, host and port, no path)",
                        s.get_ref()
                    ),
                ));
            }
            url
        }
    };
    let bouncer_key_file = match &raw.bouncer_key_file {
        None => d.bouncer_key_file.clone(),
        Some(s) => absolute(s, "crowdsec.bouncer_key_file", place)?,
    };

    let ca_file = match &raw.ca_file {
        None => None,
        Some(s) if s.get_ref().is_empty() => None,
        Some(s) => Some(absolute(s, "crowdsec.ca_file", place)?),
    };
    let mut scopes = Vec::new();
    for (i, s) in raw.scopes.iter().flatten().enumerate() {
        let scope = match s.get_ref().to_ascii_lowercase().as_str() {
            "ip" => Scope::Ip,
            "range" => Scope::Range,
            _ => {
                return Err(place.error(
                    s.span(),
                    Some(format!("crowdsec.scopes[{i}]")),
                    format!(
                        "`{}` is not a scope mailguard enforces (ip, range)",
                        s.get_ref()
                    ),
                ));
            }
        };
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    if raw.scopes.is_none() {
        scopes = d.scopes.clone();
    }
    if scopes.is_empty() {
        return Err(place.error(
            whole.clone(),
            Some("crowdsec.scopes".into()),
            "no scope: the bouncer would enforce nothing (ip, range)".into(),
        ));
    }
    let mut origins = Vec::new();
    for (i, s) in raw.origins.iter().flatten().enumerate() {
        let o = s.get_ref();
        if o.is_empty()
            || !o
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_:.".contains(&b))
        {
            return Err(place.error(
                s.span(),
                Some(format!("crowdsec.origins[{i}]")),
                format!("`{o}` is not an origin name (crowdsec, cscli, CAPI, lists, ...)"),
            ));
        }
        origins.push(o.clone());
    }
    let machine_id = match &raw.machine_id {
        None => String::new(),
        Some(s) => {
            let id = s.get_ref();
            if !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                || id.len() > 64
            {
                return Err(place.error(
                    s.span(),
                    Some("crowdsec.machine_id".into()),
                    format!("`{id}` is not a machine name (letters, digits, - _ ., at most 64)"),
                ));
            }
            id.clone()
        }
    };
    let machine_password_file = match &raw.machine_password_file {
        None => d.machine_password_file.clone(),
        Some(s) => absolute(s, "crowdsec.machine_password_file", place)?,
    };
    let mut share = Vec::new();
    for (i, s) in raw.share.iter().flatten().enumerate() {
        let r = s.get_ref();
        if !rules.rules.iter().any(|rule| rule.name == *r) {
            let names: Vec<&str> = rules.rules.iter().map(|rule| rule.name.as_str()).collect();
            return Err(place.error(
                s.span(),
                Some(format!("crowdsec.share[{i}]")),
                format!("`{r}` is not a ban rule ({})", names.join(", ")),
            ));
        }
        share.push(r.clone());
    }
    let share_refused = match &raw.share_refused {
        None => d.share_refused,
        Some(n) => match u32::try_from(*n.get_ref()) {
            Ok(v) if v <= 1_000_000 => v,
            _ => {
                return Err(place.error(
                    n.span(),
                    Some("crowdsec.share_refused".into()),
                    format!(
                        "{} is out of range (0: not shared, up to 1000000 refusals within {REFUSAL_WINDOW}s)",
                        n.get_ref()
                    ),
                ));
            }
        },
    };
    if share_refused > 0 && machine_id.is_empty() {
        let span = raw
            .share_refused
            .as_ref()
            .map_or(whole.clone(), Spanned::span);
        return Err(place.error(
            span,
            Some("crowdsec.share_refused".into()),
            "sharing refused sources needs `crowdsec.machine_id` (the machine mailguard pushes alerts as)".into(),
        ));
    }
    let share_refused_for = seconds(
        &raw.share_refused_for,
        "crowdsec.share_refused_for",
        60..=30 * 86_400,
        d.share_refused_for,
        place,
    )?;
    let poll_interval = seconds(
        &raw.poll_interval,
        "crowdsec.poll_interval",
        1..=3600,
        d.poll_interval,
        place,
    )?;
    Ok(Crowdsec {
        enabled,
        lapi_url,
        bouncer_key_file,
        ca_file,
        poll_interval,
        resync_interval: seconds(
            &raw.resync_interval,
            "crowdsec.resync_interval",
            poll_interval..=7 * 86_400,
            d.resync_interval,
            place,
        )?,
        timeout: seconds(&raw.timeout, "crowdsec.timeout", 1..=300, d.timeout, place)?,
        scopes,
        origins,
        machine_id,
        machine_password_file,
        share,
        share_refused,
        share_refused_for,
    })
}
