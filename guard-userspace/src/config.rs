//! The configuration file (`/etc/mailguard/mailguard.toml`). It is parsed and validated whole
//! before anything is applied; an error names the file, line, column and key.

use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use guard_common::Transport;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::{budgets::Budgets, guard::AttachMode};

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
    pub lists: crate::lists::Lists,
    /// Address of the Prometheus endpoint; `None` turns it off.
    pub metrics_listen: Option<std::net::SocketAddr>,
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
            lists: crate::lists::Lists::default(),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN.parse().expect("a socket address")),
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
    budgets: Option<crate::budgets::RawBudgets>,
    mx_only: Option<bool>,
    lists: Option<crate::lists::RawLists>,
    metrics: Option<RawMetrics>,
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
        let mx_allow = self.lists.sources(crate::lists::ListName::MxAllow);
        if self.mx_only && mx_allow.cidrs.is_empty() && !mx_allow.is_external() {
            warnings.push(Warning(
                "mx_only = true but [lists.mx_allow] has no cidrs, files or spf: port 25 accepts only \
                 what `mailguard allow add` adds"
                    .to_string(),
            ));
        }
        let block = &self.lists.sources(crate::lists::ListName::Block).cidrs;
        for everyone in block.iter().filter(|n| n.prefix_len() == 0) {
            warnings.push(Warning(format!(
                "{everyone} in [lists.block] cidrs blocks every source, SSH included: `run` and \
                 `reload` refuse it unless --force"
            )));
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

    let config = Config {
        interface,
        attach_mode: raw.attach_mode.unwrap_or(defaults.attach_mode),
        monitor: raw.monitor.unwrap_or(defaults.monitor),
        icmp_echo: raw.icmp_echo.unwrap_or(defaults.icmp_echo),
        mail_ports,
        open_ports,
        budgets: crate::budgets::validate(raw.budgets, place)?,
        mx_only: raw.mx_only.unwrap_or(false),
        lists: crate::lists::validate(raw.lists, place)?,
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

/// Linux interface names: 1 to 15 bytes, no `/`, no whitespace, not `.` or `..`.
pub fn validate_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 15 {
        return Err(format!(
            "interface name `{name}` must be 1 to 15 characters long"
        ));
    }
    if name == "."
        || name == ".."
        || name.contains('/')
        || name.contains(char::is_whitespace)
        || name.contains(':')
    {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    Ok(())
}

/// Parses a CIDR (`198.18.0.0/15`, `2001:db8::/32`) or a bare address (a host route).
/// Host bits set after the prefix are an error that shows the network meant.
/// `text` cut to `max` characters, saying how much was left out: what an error quotes of
/// what it refuses (a 50 MB value is not echoed into the log and the answer).
pub fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((at, _)) => format!("{}... ({} more bytes)", &text[..at], text.len() - at),
    }
}

/// Bytes as UTF-8 text, or an error naming the line and column of the first invalid byte.
pub fn utf8_text(bytes: Vec<u8>) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
        format!("{line}:{column}: not UTF-8 text (an invalid byte here)")
    })
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

/// A CIDR or an address (a /32 or /128). An IPv4-mapped IPv6 address or prefix
/// (`::ffff:198.51.100.7`, `::ffff:198.51.100.0/120`) is taken as the IPv4 one it maps, the
/// way the kernel and XDP see those sources.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    parse_cidr_as_written(text).and_then(|net| unmap(net, text))
}

/// An IPv4-mapped prefix (inside `::ffff:0:0/96`) as its IPv4 prefix. (A shorter prefix with
/// its host bits clear cannot have a mapped network: it stays IPv6.)
fn unmap(net: IpNet, text: &str) -> Result<IpNet, String> {
    let IpNet::V6(v6) = net else {
        return Ok(net);
    };
    match v6.network().to_ipv4_mapped() {
        Some(v4) if v6.prefix_len() >= 96 => {
            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - 96).map_err(|e| format!("`{text}`: {e}"))
        }
        _ => Ok(net),
    }
}

fn parse_cidr_as_written(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(addr) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let shown = clip(text, 60);
    let Some((addr, len)) = t.split_once('/') else {
        return Err(format!("`{shown}` is not an IP address or CIDR"));
    };
    let addr: IpAddr = addr.parse().map_err(|_| {
        format!(
            "`{}` in `{shown}` is not an IPv4 or IPv6 address",
            clip(addr, 60)
        )
    })?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    // Digits only, without a leading zero: `/+24` and `/024` are not prefix lengths.
    let written = len.chars().all(|c| c.is_ascii_digit()) && (len == "0" || !len.starts_with('0'));
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| written && l <= max)
        .ok_or_else(|| {
            format!(
                "prefix length `/{}` in `{shown}` is not 0 to {max}",
                clip(len, 20)
            )
        })?;
    let net = IpNet::new(addr, len).map_err(|e| format!("`{text}`: {e}"))?;
    if net.trunc() != net {
        return Err(format!(
            "`{text}` has host bits set; did you mean `{}`?",
            net.trunc()
        ));
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "t.toml")
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.mail_ports, vec![25, 110, 143, 465, 587, 993, 995]);
        assert_eq!(
            c.open_ports,
            vec![OpenPort {
                port: 22,
                protocol: Protocol::Tcp,
                from: vec![]
            }]
        );
        assert_eq!(c.icmp_echo, EchoPolicy::Allow);
        assert!(!c.monitor);
        assert!(c.warnings().is_empty());
    }

    #[test]
    fn full_file_parses() {
        let c = parse(
            r#"
interface = "eth0"
attach_mode = "skb"
monitor = true
icmp_echo = "drop"
mail_ports = [25, 587]

[[open_ports]]
port = 22
from = ["198.18.0.0/15", "2001:db8::/32", "198.19.0.7"]

[[open_ports]]
port = 51820
protocol = "udp"
"#,
        )
        .unwrap();
        assert_eq!(c.interface.as_deref(), Some("eth0"));
        assert_eq!(c.attach_mode, AttachMode::Skb);
        assert!(c.monitor);
        assert_eq!(c.icmp_echo, EchoPolicy::Drop);
        assert_eq!(c.mail_ports, vec![25, 587]);
        assert_eq!(c.open_ports.len(), 2);
        assert_eq!(c.open_ports[0].from.len(), 3);
        assert_eq!(c.open_ports[0].from[2].to_string(), "198.19.0.7/32");
        assert_eq!(c.open_ports[1].protocol, Protocol::Udp);
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = parse("monitor = false\nmail_ports = [25,, 587]\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        assert!(e.contains("`mail_ports`"), "{e}");
    }

    #[test]
    fn wrong_type_names_key_and_line() {
        let e = parse("\n\nmonitor = \"yes\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:11:"), "{e}");
        assert!(e.contains("`monitor`"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let e = parse("monitor = false\nmail_port = [25]\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:1:"), "{e}");
        assert!(e.contains("mail_port"), "{e}");
    }

    #[test]
    fn bad_enum_value_is_refused() {
        let e = parse("attach_mode = \"fast\"\n").unwrap_err();
        assert!(e.contains("t.toml:1:15"), "{e}");
        assert!(
            e.contains("auto") && e.contains("native") && e.contains("skb"),
            "{e}"
        );
        let e = parse("icmp_echo = \"maybe\"\n").unwrap_err();
        assert!(e.contains("allow") && e.contains("drop"), "{e}");
    }

    #[test]
    fn port_out_of_range_names_element() {
        let e = parse("mail_ports = [25, 70000]\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:1:19: `mail_ports[1]`: 70000 is not a port number (1 to 65535)"
        );
        let e = parse("mail_ports = [0]\n").unwrap_err();
        assert!(e.contains("0 is not a port number"), "{e}");
        let e = parse("[[open_ports]]\nport = -1\n").unwrap_err();
        assert_eq!(
            e,
            "t.toml:2:8: `open_ports[0].port`: -1 is not a port number (1 to 65535)"
        );
    }

    #[test]
    fn duplicate_and_conflicting_ports_are_refused() {
        let e = parse("mail_ports = [25, 587, 25]\n").unwrap_err();
        assert_eq!(e, "t.toml:1:24: `mail_ports[2]`: port 25 is listed twice");
        let e = parse("mail_ports = [25]\n[[open_ports]]\nport = 25\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:3:8: `open_ports[0].port`: port 25/tcp is already a mail port"),
            "{e}"
        );
        // UDP 25 is not a mail port: no conflict.
        parse("mail_ports = [25]\n[[open_ports]]\nport = 25\nprotocol = \"udp\"\n").unwrap();
        let e = parse("[[open_ports]]\nport = 22\n[[open_ports]]\nport = 22\n").unwrap_err();
        assert!(
            e.contains("`open_ports[1]`: port 22/tcp is opened twice"),
            "{e}"
        );
    }

    #[test]
    fn bad_cidrs_name_their_place() {
        let cases = [
            (
                "198.18.0.1/24",
                "`198.18.0.1/24` has host bits set; did you mean `198.18.0.0/24`?",
            ),
            (
                "198.18.0.0/33",
                "prefix length `/33` in `198.18.0.0/33` is not 0 to 32",
            ),
            (
                "2001:db8::/129",
                "prefix length `/129` in `2001:db8::/129` is not 0 to 128",
            ),
            (
                "2001:db8::1/32",
                "`2001:db8::1/32` has host bits set; did you mean `2001:db8::/32`?",
            ),
            (
                "198.18.0/24",
                "`198.18.0` in `198.18.0/24` is not an IPv4 or IPv6 address",
            ),
            (
                "mail.example",
                "`mail.example` is not an IP address or CIDR",
            ),
            (
                "198.18.0.0/x",
                "prefix length `/x` in `198.18.0.0/x` is not 0 to 32",
            ),
        ];
        for (cidr, message) in cases {
            let text =
                format!("[[open_ports]]\nport = 22\nfrom = [\"198.19.0.0/16\", \"{cidr}\"]\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(
                e,
                format!("t.toml:3:26: `open_ports[0].from[1]`: {message}"),
                "{cidr}"
            );
        }
    }

    #[test]
    fn bad_interface_names_are_refused() {
        for name in ["", "a/b", "this-name-is-far-too-long", "eth 0"] {
            let e = parse(&format!("interface = \"{name}\"\n")).unwrap_err();
            assert!(e.starts_with("t.toml:1:13: `interface`:"), "{e}");
        }
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let e = Config::load(Path::new("/nonexistent/mailguard.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/mailguard.toml"), "{e}");
    }

    #[test]
    fn metrics_listen_address() {
        assert_eq!(
            parse("").unwrap().metrics_listen,
            Some("127.0.0.1:9477".parse().unwrap())
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"\"\n").unwrap().metrics_listen,
            None
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"[::1]:9100\"\n")
                .unwrap()
                .metrics_listen,
            Some("[::1]:9100".parse().unwrap())
        );
        let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:2:10: `metrics.listen`: `localhost` is not an address"),
            "{e}"
        );
    }

    #[test]
    fn warns_when_ssh_would_be_dropped() {
        let (_, w) = Config::parse("open_ports = []\n", "t").unwrap();
        assert_eq!(w.len(), 1);
        assert!(
            w[0].0.contains("SSH (22/tcp) is not in open_ports"),
            "{}",
            w[0]
        );
        let (_, w) = Config::parse(
            "[[open_ports]]\nport = 22\nfrom = [\"198.18.0.0/15\"]\n",
            "t",
        )
        .unwrap();
        assert!(w[0].0.contains("only accepts 198.18.0.0/15"), "{}", w[0]);
    }

    #[test]
    fn ipv4_mapped_sources_are_taken_as_ipv4() {
        assert_eq!(
            parse_cidr("::ffff:198.51.100.7").unwrap(),
            "198.51.100.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_cidr("::ffff:198.51.100.0/120").unwrap(),
            "198.51.100.0/24".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_cidr("::ffff:0:0/96").unwrap(),
            "0.0.0.0/0".parse::<IpNet>().unwrap()
        );
        // Not mapped: stays IPv6.
        assert!(parse_cidr("2001:db8::/32").unwrap().addr().is_ipv6());
    }

    #[test]
    fn prefix_lengths_are_plain_numbers() {
        for bad in [
            "198.18.0.0/+24",
            "198.18.0.0/024",
            "198.18.0.0/ 24",
            "2001:db8::/064",
        ] {
            let err = parse_cidr(bad).unwrap_err();
            assert!(err.contains("prefix length"), "{bad}: {err}");
        }
        assert!(parse_cidr("0.0.0.0/0").is_ok());
    }

    #[test]
    fn invalid_utf8_is_placed_and_huge_values_are_not_echoed() {
        let err =
            utf8_text(b"interface = \"eth0\"\nicmp_echo = \"al\xfflow\"\n".to_vec()).unwrap_err();
        assert_eq!(err, "2:16: not UTF-8 text (an invalid byte here)");
        let huge = "9".repeat(50 << 20);
        let err = parse_cidr(&huge).unwrap_err();
        assert!(err.len() < 200, "{} bytes of error", err.len());
        assert!(err.contains("more bytes"), "{err}");
    }
}
