//! Durations as operators write them (`90s`, `10m`, `1h30m`, `2d`) and as mailguard shows them.

/// The longest a timed list entry may last: ten years (longer is "for ever": no `--for`).
pub const MAX_ENTRY_SECONDS: u64 = 10 * 365 * 86_400;

/// A duration such as `90s`, `10m`, `1h`, `2d`, `1h30m` (a bare number is seconds), in seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration (examples: 90s, 10m, 1h, 2d, 1h30m)");
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        total = number
            .parse::<u64>()
            .ok()
            .and_then(|n| total.checked_add(n))
            .ok_or_else(bad)?;
    }
    if total == 0 {
        return Err(format!("`{text}`: a duration must be at least one second"));
    }
    // Ten years: anything longer is a mistake (leave `--for` out for a permanent entry).
    if total > MAX_ENTRY_SECONDS {
        return Err(format!(
            "`{text}` is longer than ten years; leave out --for for a permanent entry"
        ));
    }
    Ok(total)
}

/// Seconds as a short human duration: `5s`, `2m05s`, `2h01m`, `1d01h`.
pub fn human_duration(s: u64) -> String {
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("1x").unwrap_err().contains("not a duration"));
        assert!(parse_duration("h").is_err());
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("at least one second")
        );
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("11000d").unwrap_err().contains("ten years"));
    }

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(125), "2m05s");
        assert_eq!(human_duration(7260), "2h01m");
        assert_eq!(human_duration(90000), "1d01h");
    }
}
