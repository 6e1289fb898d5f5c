//! The configuration file (`/etc/mailguard/mailguard.toml`). It is parsed and validated whole
//! before anything is applied; an error names the file, line, column and key.
//!
//! Layer 1: it imports no other layer. `budgets` and `lists` are its sections.

use std::{
    collections::BTreeSet,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

pub mod bans;
pub mod budgets;
pub mod crowdsec;
pub mod durations;
pub mod lists;
mod values;

pub(crate) use values::int;
pub use values::{clip, parse_cidr, utf8_text, validate_interface_name};

use guard_common::Transport;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::config::budgets::Budgets;

/// Where `mailguard` looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/mailguard/mailguard.toml";

/// Mail service ports when `mail_ports` is not set.
pub const DEFAULT_MAIL_PORTS: [u16; 7] = [25, 465, 587, 110, 995, 143, 993];

/// The SSH port, open by default so that nobody locks themselves out.
pub const SSH_PORT: u16 = 22;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Config {
    /// Interface to attach to (`--iface` overrides it).
    pub interface: Option<String>,
    pub attach_mode: AttachMode,
    /// Count every verdict but pass every packet.
    pub monitor: bool,
    pub icmp_echo: EchoPolicy,
    /// TCP ports of mail services, ascending.
    pub mail_ports: Vec<u16>,
    /// Ports opened on purpose.
    pub open_ports: Vec<OpenPort>,
    /// Per-source budgets for new connections to mail ports.
    pub budgets: Budgets,
    /// MX-only mode: the mx-class ports (25) accept only sources in the `mx_allow` list.
    pub mx_only: bool,
    /// The source lists (`mx_allow`, `trusted`, `block`) and how they are refreshed.
    pub lists: crate::config::lists::Lists,
    /// Address of the Prometheus endpoint; `None` turns it off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Bans from what Postfix and Dovecot see.
    pub bans: crate::config::bans::Bans,
    /// Decisions of a CrowdSec Local API, enforced as block list entries.
    pub crowdsec: crate::config::crowdsec::Crowdsec,
}

/// Where the metrics endpoint listens by default: loopback only.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EchoPolicy {
    Allow,
    Drop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn transport(self) -> Transport {
        match self {
            Protocol::Tcp => Transport::Tcp,
            Protocol::Udp => Transport::Udp,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A port opened on purpose.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OpenPort {
    pub port: u16,
    pub protocol: Protocol,
    /// Sources allowed; empty means any source.
    #[serde(serialize_with = "serialize_nets")]
    pub from: Vec<IpNet>,
}

pub(crate) fn serialize_nets<S: serde::Serializer>(
    nets: &[IpNet],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(nets.iter().map(|n| n.to_string()))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interface: None,
            attach_mode: AttachMode::Auto,
            monitor: false,
            icmp_echo: EchoPolicy::Allow,
            mail_ports: sorted(DEFAULT_MAIL_PORTS.to_vec()),
            open_ports: vec![OpenPort {
                port: SSH_PORT,
                protocol: Protocol::Tcp,
                from: vec![],
            }],
            budgets: Budgets::default(),
            mx_only: false,
            lists: crate::config::lists::Lists::default(),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("a socket address")),
            bans: crate::config::bans::Bans::default(),
            crowdsec: crate::config::crowdsec::Crowdsec::default(),
        }
    }
}

fn sorted(mut v: Vec<u16>) -> Vec<u16> {
    v.sort_unstable();
    v
}

/// A configuration that cannot be used, with the place of the problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} holds no setting{}: a file still being written, or cut short? Write it whole, then \
         try again",
        path.display(),
        if *bytes == 0 { " (0 bytes)".to_string() } else { format!(" ({bytes} bytes of comments and blanks)") }
    )]
    Empty { path: PathBuf, bytes: u64 },
    #[error(
        "{} kept changing while it was read: try again once it is written whole",
        path.display()
    )]
    Unstable { path: PathBuf },
    #[error("{}", Located(self))]
    Invalid {
        /// File name (or `<input>`).
        origin: String,
        line: usize,
        column: usize,
        /// The key the problem is in, such as `open_ports[1].from[0]`, when known.
        key: Option<String>,
        message: String,
    },
}

struct Located<'a>(&'a ConfigError);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let ConfigError::Invalid {
            origin,
            line,
            column,
            key,
            message,
        } = self.0
        {
            write!(f, "{origin}:{line}:{column}: ")?;
            if let Some(key) = key {
                write!(f, "`{key}`: ")?;
            }
            write!(f, "{message}")?;
        }
        Ok(())
    }
}

/// Something valid but risky in a configuration, to be shown to the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning(pub String);

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---- The file as written, with the places of its values --------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    interface: Option<Spanned<String>>,
    attach_mode: Option<AttachMode>,
    monitor: Option<bool>,
    icmp_echo: Option<EchoPolicy>,
    mail_ports: Option<Vec<Spanned<i64>>>,
    open_ports: Option<Vec<Spanned<RawOpenPort>>>,
    budgets: Option<crate::config::budgets::RawBudgets>,
    mx_only: Option<bool>,
    lists: Option<crate::config::lists::RawLists>,
    metrics: Option<RawMetrics>,
    bans: Option<crate::config::bans::RawBans>,
    crowdsec: Option<Spanned<crate::config::crowdsec::RawCrowdsec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOpenPort {
    port: Spanned<i64>,
    protocol: Option<Protocol>,
    from: Option<Vec<Spanned<String>>>,
}

impl Config {
    /// Reads and validates a configuration file.
    /// Reads and validates a configuration file. A file without a single setting is refused
    /// (a truncated file, or one read while an editor rewrites it, would otherwise mean "every
    /// default"), and so is one that changes while it is read.
    pub fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigError> {
        Config::load_with_text(path).map(|(config, warnings, _)| (config, warnings))
    }

    /// As `load`, with the text it was read from.
    pub fn load_with_text(path: &Path) -> Result<(Config, Vec<Warning>, String), ConfigError> {
        let text = read_stable(path)?;
        let (config, warnings) = Config::parse(&text, &path.display().to_string())?;
        let has_setting = toml::from_str::<toml::Table>(&text).is_ok_and(|t| !t.is_empty());
        if !has_setting {
            return Err(ConfigError::Empty {
                path: path.to_path_buf(),
                bytes: text.len() as u64,
            });
        }
        Ok((config, warnings, text))
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<(Config, Vec<Warning>), ConfigError> {
        // A byte order mark some editors write first is not part of the first key.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let place = Place { text, origin };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            place.error(
                span.clone(),
                key_at(text, span.start),
                e.message().to_string(),
            )
        })?;
        validate(raw, &place)
    }

    /// Valid but risky choices to show the operator: SSH not open or limited to some
    /// sources, monitor mode on.
    pub fn warnings(&self) -> Vec<Warning> {
        let mut warnings = Vec::new();
        let ssh_open = self
            .open_ports
            .iter()
            .any(|p| p.port == SSH_PORT && p.protocol == Protocol::Tcp);
        if !ssh_open && !self.monitor {
            warnings.push(Warning(format!(
                "SSH ({SSH_PORT}/tcp) is not in open_ports: new SSH connections to this host will be \
                 dropped. Add [[open_ports]] port = {SSH_PORT} unless you reach the host another way."
            )));
        }
        for p in &self.open_ports {
            if p.port == SSH_PORT && p.protocol == Protocol::Tcp && !p.from.is_empty() {
                warnings.push(Warning(format!(
                    "SSH ({SSH_PORT}/tcp) only accepts {}: make sure your own address is in that list.",
                    p.from.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")
                )));
            }
        }
        if self.monitor {
            warnings.push(Warning(
                "monitor mode: verdicts are counted, but no packet is dropped".to_string(),
            ));
        }
        let mx_allow = self.lists.sources(crate::config::lists::ListName::MxAllow);
        if self.mx_only && mx_allow.cidrs.is_empty() && !mx_allow.is_external() {
            warnings.push(Warning(
                "mx_only = true but [lists.mx_allow] has no cidrs, files or spf: port 25 accepts only \
                 what `mailguard allow add` adds"
                    .to_string(),
            ));
        }
        let block = &self
            .lists
            .sources(crate::config::lists::ListName::Block)
            .cidrs;
        for everyone in block.iter().filter(|n| n.prefix_len() == 0) {
            warnings.push(Warning(format!(
                "{everyone} in [lists.block] cidrs blocks every source, SSH included: `run` and \
                 `reload` refuse it unless --force"
            )));
        }
        let bans = &self.bans;
        if bans.enabled && !bans.journal && bans.files.is_empty() && bans.policy_listen.is_none() {
            warnings.push(Warning(
                "[bans] enabled = true but it has no journal, files or policy_listen: nothing \
                 reports events, so nobody is banned"
                    .to_string(),
            ));
        }
        if bans.enabled && (bans.monitor || self.monitor) {
            warnings.push(Warning(
                "bans in monitor mode: rules fire and are counted, nobody is banned".to_string(),
            ));
        }
        if self.mx_only && !self.mail_ports.contains(&25) {
            warnings.push(Warning(
                "mx_only = true but 25 is not in mail_ports: port 25 is closed anyway".to_string(),
            ));
        }
        warnings
    }
}

pub(crate) struct Place<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Place<'_> {
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: Option<String>,
        message: String,
    ) -> ConfigError {
        let (line, column) = line_column(self.text, span.start);
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            line,
            column,
            key,
            message,
        }
    }
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// The key assigned on the line holding `offset`, when the line reads `key = ...`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then(|| key.to_string())
}

fn port(value: &Spanned<i64>, key: String, place: &Place) -> Result<u16, ConfigError> {
    let v = *value.get_ref();
    if (1..=65535).contains(&v) {
        Ok(v as u16)
    } else {
        Err(place.error(
            value.span(),
            Some(key),
            format!("{v} is not a port number (1 to 65535)"),
        ))
    }
}

fn validate(raw: RawConfig, place: &Place) -> Result<(Config, Vec<Warning>), ConfigError> {
    let defaults = Config::default();

    let interface = match raw.interface {
        Some(name) => {
            validate_interface_name(name.get_ref())
                .map_err(|m| place.error(name.span(), Some("interface".into()), m))?;
            Some(name.into_inner())
        }
        None => None,
    };

    let mail_ports = match &raw.mail_ports {
        None => defaults.mail_ports.clone(),
        Some(list) => {
            let mut seen = BTreeSet::new();
            for (i, p) in list.iter().enumerate() {
                let n = port(p, format!("mail_ports[{i}]"), place)?;
                if !seen.insert(n) {
                    return Err(place.error(
                        p.span(),
                        Some(format!("mail_ports[{i}]")),
                        format!("port {n} is listed twice"),
                    ));
                }
            }
            seen.into_iter().collect()
        }
    };

    let open_ports = match raw.open_ports {
        None => defaults.open_ports.clone(),
        Some(list) => {
            let mut seen: BTreeSet<(Protocol, u16)> = BTreeSet::new();
            let mut out = Vec::with_capacity(list.len());
            for (i, entry) in list.iter().enumerate() {
                let e = entry.get_ref();
                let key = format!("open_ports[{i}]");
                let n = port(&e.port, format!("{key}.port"), place)?;
                let protocol = e.protocol.unwrap_or(Protocol::Tcp);
                if protocol == Protocol::Tcp && mail_ports.contains(&n) {
                    return Err(place.error(
                        e.port.span(),
                        Some(format!("{key}.port")),
                        format!(
                            "port {n}/tcp is already a mail port; a port is either in mail_ports or in open_ports"
                        ),
                    ));
                }
                if !seen.insert((protocol, n)) {
                    return Err(place.error(
                        entry.span(),
                        Some(key),
                        format!("port {n}/{} is opened twice", protocol.name()),
                    ));
                }
                let mut from = Vec::new();
                for (j, cidr) in e.from.iter().flatten().enumerate() {
                    let net = parse_cidr(cidr.get_ref()).map_err(|m| {
                        place.error(cidr.span(), Some(format!("{key}.from[{j}]")), m)
                    })?;
                    from.push(net);
                }
                out.push(OpenPort {
                    port: n,
                    protocol,
                    from,
                });
            }
            out
        }
    };

    let bans = crate::config::bans::validate(raw.bans, place)?;
    let config = Config {
        interface,
        attach_mode: raw.attach_mode.unwrap_or(defaults.attach_mode),
        monitor: raw.monitor.unwrap_or(defaults.monitor),
        icmp_echo: raw.icmp_echo.unwrap_or(defaults.icmp_echo),
        mail_ports,
        open_ports,
        budgets: crate::config::budgets::validate(raw.budgets, place)?,
        mx_only: raw.mx_only.unwrap_or(false),
        lists: crate::config::lists::validate(raw.lists, place)?,
        crowdsec: crate::config::crowdsec::validate(raw.crowdsec, place, &bans.rules)?,
        bans,
        metrics_listen: match raw.metrics.and_then(|m| m.listen) {
            None => defaults.metrics_listen,
            Some(s) if s.get_ref().is_empty() => None,
            Some(s) => Some(s.get_ref().parse().map_err(|_| {
                place.error(
                    s.span(),
                    Some("metrics.listen".into()),
                    format!(
                        "`{}` is not an address and port such as 127.0.0.1:9477 or [::1]:9477",
                        s.get_ref()
                    ),
                )
            })?),
        },
    };
    let warnings = config.warnings();
    Ok((config, warnings))
}

/// The text of `path`, read again when its size or modification time changed during the
/// read (a writer in progress); `Unstable` after a few tries.
fn read_stable(path: &Path) -> Result<String, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let stamp = |m: std::fs::Metadata| (m.len(), m.modified().ok());
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let before = std::fs::metadata(path).map(stamp).map_err(read_error)?;
        let bytes = std::fs::read(path).map_err(read_error)?;
        let after = std::fs::metadata(path).map(stamp).map_err(read_error)?;
        let text = utf8_text(bytes).map_err(|m| ConfigError::Invalid {
            origin: path.display().to_string(),
            line: m
                .split(':')
                .next()
                .and_then(|l| l.parse().ok())
                .unwrap_or(1),
            column: m
                .split(':')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(1),
            key: None,
            message: "not UTF-8 text (an invalid byte here)".to_string(),
        })?;
        if before == after && after.0 == text.len() as u64 {
            return Ok(text);
        }
    }
    Err(ConfigError::Unstable {
        path: path.to_path_buf(),
    })
}

/// How to attach: the config's `attach_mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic when the driver has no XDP support.
    Auto,
    Native,
    Skb,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachMode::Auto => "auto",
            AttachMode::Native => "native",
            AttachMode::Skb => "skb",
        }
    }
}

#[cfg(test)]
mod tests;
