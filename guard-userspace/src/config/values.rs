//! Values the configuration, the list files and the command line share: CIDRs (IPv4-mapped
//! ones read as IPv4), interface names, UTF-8 text, and how a refused value is quoted.

use std::net::IpAddr;

use ipnet::IpNet;

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

/// Parses a CIDR (`198.18.0.0/15`, `2001:db8::/32`) or a bare address (a host route).
/// Host bits set after the prefix are an error that shows the network meant.
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

/// An integer setting within `range`, or `default` when absent; out of range is refused with
/// its place and key.
pub(crate) fn int(
    v: &Option<toml::Spanned<i64>>,
    key: &str,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
    place: &crate::config::Place,
) -> Result<i64, crate::config::ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if range.contains(s.get_ref()) => Ok(*s.get_ref()),
        Some(s) => Err(place.error(
            s.span(),
            Some(key.to_string()),
            format!(
                "{} is out of range ({} to {})",
                s.get_ref(),
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A duration setting (`90s`, `10m`, ...) in seconds within `range`, or `default` when absent;
/// what is not a duration, or out of range, is refused with its place and key.
pub(crate) fn seconds(
    v: &Option<toml::Spanned<String>>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
    default: u64,
    place: &crate::config::Place,
) -> Result<u64, crate::config::ConfigError> {
    let Some(s) = v else { return Ok(default) };
    let n = crate::config::durations::parse_duration(s.get_ref())
        .map_err(|m| place.error(s.span(), Some(key.into()), m))?;
    if !range.contains(&n) {
        return Err(place.error(
            s.span(),
            Some(key.into()),
            format!(
                "`{}` is out of range ({}s to {}s)",
                s.get_ref(),
                range.start(),
                range.end()
            ),
        ));
    }
    Ok(n)
}
