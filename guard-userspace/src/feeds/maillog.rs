//! Postfix and Dovecot log lines as events for the ban rules: authentication failures,
//! unknown recipients, relays denied, postscreen's verdicts.
//!
//! The client's address is taken only from the field the server itself writes, at the place
//! the server writes it, never from text the client chose:
//!
//! - Postfix `smtpd` and `postscreen` put the client first, `NAME[ADDRESS]`, where NAME is a
//!   hostname Postfix verified or `unknown`. Everything the client controls (HELO, sender,
//!   recipients) comes after it. The address is the one in the first brackets after the fixed
//!   words (`warning: `, `reject: RCPT from `), and NAME must be a hostname.
//! - Dovecot's login processes write `user=<...>` (the client's choice) before `rip=ADDRESS`,
//!   and only server-made fields after it (`lip=`, `mpid=`, `TLS`, `session=<...>`): the
//!   address is the last `rip=`.
//!
//! What the event is also comes from the server's own words before the client's text (the
//! reply code, Dovecot's disconnect reason). A line of a shape not known here is `Unknown`:
//! counted, never guessed at. A line of a known program that is not an event is `Ignored`.

use std::net::IpAddr;

pub use crate::config::bans::EventKind;

/// One event: what happened, from which client, and how many times the line reports it
/// (Dovecot sums a connection's failed attempts into one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub source: IpAddr,
    pub count: u32,
    /// For unknown recipients: the recipient, so that a rule counts distinct ones (the same
    /// mistyped address sent again is one). Client-controlled: used only as a key.
    pub recipient: Option<String>,
}

/// What a line is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Event(Event),
    /// A line of Postfix or Dovecot that is not an event (deliveries, connects, ...).
    Ignored,
    /// A line whose shape is not known: counted by the caller, never guessed at.
    Unknown,
}

/// Dovecot sums at most this many attempts into one event (a line cannot claim more).
const MAX_ATTEMPTS_PER_LINE: u32 = 100;

/// Parses one log line, as the journal (`MESSAGE` with `SYSLOG_IDENTIFIER`) or a syslog file
/// (`Dec  5 21:00:00 host postfix/smtpd[123]: ...`) has it: the program is found by its tag.
pub fn parse(line: &str) -> Parsed {
    let Some((program, message)) = tagged(line) else {
        return Parsed::Unknown;
    };
    if program.starts_with("postfix") {
        if program.ends_with("/postscreen") {
            return postscreen(message);
        }
        if program.ends_with("smtpd") {
            return smtpd(message);
        }
        return Parsed::Ignored;
    }
    if program == "dovecot" || program.starts_with("dovecot:") {
        return dovecot(message);
    }
    Parsed::Unknown
}

/// The program tag and the message: `postfix/submission/smtpd[123]: text` gives
/// (`postfix/submission/smtpd`, `text`), `dovecot: imap-login: text` gives (`dovecot`,
/// `imap-login: text`). The tag is the line's first word (the journal's lines, as the
/// follower writes them), or the first word after a syslog file's date and host
/// (`Dec  5 21:00:00 host tag: ...`, `2026-12-05T21:00:00+00:00 host tag: ...`): never a word
/// further on, which another program may have copied from a client (sshd's "Invalid user").
fn tagged(line: &str) -> Option<(&str, &str)> {
    let words: Vec<(usize, &str)> = line
        .split(' ')
        .scan(0, |at, w| {
            let start = *at;
            *at += w.len() + 1;
            Some((start, w))
        })
        .filter(|(_, w)| !w.is_empty())
        .take(5)
        .collect();
    let first = words.first()?.1;
    let month_first = first.len() == 3 && first.bytes().all(|b| b.is_ascii_alphabetic());
    // Dovecot's own log file (`log_path`): `Dec 06 21:00:00 imap-login: Info: ...`, no host.
    if month_first
        && let Some(&(start, word)) = words.get(3)
        && word.ends_with("-login:")
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-' || b == b':')
    {
        return Some(("dovecot", line.get(start..)?));
    }
    let tag_word = if first.starts_with("postfix") || first.starts_with("dovecot") {
        0
    } else if month_first {
        4 // month, day, time, host
    } else if first.bytes().next().is_some_and(|b| b.is_ascii_digit()) && first.contains('T') {
        2 // RFC 3339 time, host
    } else {
        return None;
    };
    let (start, word) = *words.get(tag_word)?;
    let tag = word.strip_suffix(':')?;
    if !(tag.starts_with("postfix") || tag.starts_with("dovecot")) {
        return None;
    }
    let program = tag.split('[').next()?;
    let message = line.get(start + word.len() + 1..)?;
    Some((program, message))
}

/// `NAME[ADDRESS]` at the start of `text`, NAME a hostname or `unknown`: the address, and the
/// text after the closing bracket.
fn client(text: &str) -> Option<(IpAddr, &str)> {
    let open = text.find('[')?;
    let name = &text[..open];
    let hostname = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
    if !hostname {
        return None;
    }
    let close = text[open..].find(']')? + open;
    let address = text[open + 1..close]
        .strip_prefix("IPv6:")
        .unwrap_or(&text[open + 1..close]);
    let address: IpAddr = address.parse().ok()?;
    Some((unmapped(address), &text[close + 1..]))
}

/// An IPv4-mapped IPv6 address as the IPv4 address XDP sees.
fn unmapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

fn event(kind: EventKind, source: IpAddr, count: u32, recipient: Option<String>) -> Parsed {
    Parsed::Event(Event {
        kind,
        source,
        count,
        recipient,
    })
}

fn smtpd(message: &str) -> Parsed {
    // `warning: NAME[ADDRESS]: SASL LOGIN authentication failed: ...`
    if let Some(rest) = message.strip_prefix("warning: ") {
        let Some((source, after)) = client(rest) else {
            return Parsed::Ignored;
        };
        let Some(after) = after.strip_prefix(": SASL ") else {
            return Parsed::Ignored;
        };
        // The mechanism (one word), then Postfix's own words.
        let Some((mechanism, words)) = after.split_once(' ') else {
            return Parsed::Unknown;
        };
        if !mechanism
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Parsed::Unknown;
        }
        let Some(reason) = words.strip_prefix("authentication failed") else {
            return Parsed::Ignored;
        };
        // The reason right after is Postfix's (or its SASL server's). The server's own trouble
        // (Dovecot down or slow) fails every user alike, and a mechanism the server does not
        // offer tried no password: neither is a guess.
        let reason = reason.trim_start_matches(':').trim_start();
        if reason.starts_with("Connection lost to authentication server")
            || reason.starts_with("Invalid authentication mechanism")
        {
            return Parsed::Ignored;
        }
        return event(EventKind::AuthFailed, source, 1, None);
    }
    // `NOQUEUE: reject: RCPT from NAME[ADDRESS]: 550 5.1.1 <rcpt>: Recipient address
    // rejected: ...; from=<...> to=<...> proto=ESMTP helo=<...>` (a queue id instead of
    // NOQUEUE after the first recipient).
    let Some((queue_id, rest)) = message.split_once(": reject: RCPT from ") else {
        return Parsed::Ignored;
    };
    // Before it, only Postfix's queue id (or NOQUEUE).
    if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Parsed::Unknown;
    }
    let Some((source, after)) = client(rest) else {
        return Parsed::Unknown;
    };
    let Some(reply) = after.strip_prefix(": ") else {
        return Parsed::Unknown;
    };
    // The reply code and enhanced status are Postfix's; the recipient follows in brackets.
    let mut words = reply.splitn(3, ' ');
    let (code, status, text) = (words.next(), words.next(), words.next().unwrap_or(""));
    match (code, status) {
        (Some("550"), Some("5.1.1")) => {
            let recipient = text
                .strip_prefix('<')
                .and_then(|t| t.split_once(">: "))
                .map(|(r, _)| r.to_ascii_lowercase());
            event(EventKind::UnknownRecipient, source, 1, recipient)
        }
        (Some("454" | "554"), Some("4.7.1" | "5.7.1"))
            if text.contains(">: Relay access denied") =>
        {
            // Even a forged "Relay access denied" in the recipient counts against the client
            // that sent it, and only against it: the address is Postfix's.
            event(EventKind::RelayDenied, source, 1, None)
        }
        _ => Parsed::Ignored,
    }
}

fn postscreen(message: &str) -> Parsed {
    // `PREGREET 11 after 0.08 from [ADDRESS]:PORT: EHLO ...`, `DNSBL rank 3 for
    // [ADDRESS]:PORT`: postscreen writes the client as `[ADDRESS]:PORT` after fixed words.
    let after = if message.starts_with("PREGREET ") {
        message.split_once(" from [").map(|(_, a)| a)
    } else if message.starts_with("DNSBL rank ") {
        message.split_once(" for [").map(|(_, a)| a)
    } else {
        return Parsed::Ignored;
    };
    let Some(after) = after else {
        return Parsed::Unknown;
    };
    let Some((address, _)) = after.split_once("]:") else {
        return Parsed::Unknown;
    };
    match address.parse::<IpAddr>() {
        Ok(a) => event(EventKind::Postscreen, unmapped(a), 1, None),
        Err(_) => Parsed::Unknown,
    }
}

fn dovecot(message: &str) -> Parsed {
    // `imap-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<bob>,
    // method=PLAIN, rip=198.51.100.7, lip=198.18.0.1, TLS, session=<...>` (2.3 also writes
    // `Disconnected: Connection closed (auth failed, ...)` and `Login aborted: ...
    // (auth_failed)`).
    let Some((service, text)) = message.split_once(": ") else {
        return Parsed::Unknown;
    };
    if !service.ends_with("-login") {
        return Parsed::Ignored;
    }
    // Dovecot's own log file writes the level first.
    let text = text.strip_prefix("Info: ").unwrap_or(text);
    // Dovecot's own words: everything before the first field (`user=<` or `rip=`).
    let head_end = ["user=<", "rip="]
        .iter()
        .filter_map(|f| text.find(f))
        .min()
        .unwrap_or(text.len());
    let head = &text[..head_end];
    let failed = head.contains("(auth failed") || head.contains("(auth_failed)");
    if !failed {
        return Parsed::Ignored;
    }
    let attempts = head
        .split_once("(auth failed, ")
        .and_then(|(_, r)| r.split_once(" attempt"))
        .and_then(|(n, _)| n.parse::<u32>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_ATTEMPTS_PER_LINE);
    // The last `rip=`: user names come before it, only server-made fields after it.
    let Some(at) = text
        .rfind(", rip=")
        .map(|a| a + 6)
        .or_else(|| text.strip_prefix("rip=").map(|_| 4))
    else {
        return Parsed::Unknown;
    };
    let value = text[at..].split(',').next().unwrap_or("");
    let after_value = &text[at + value.len()..];
    // What follows must be Dovecot's: `, lip=`, or the end.
    if !(after_value.is_empty() || after_value.starts_with(", lip=")) {
        return Parsed::Unknown;
    }
    match value.parse::<IpAddr>() {
        Ok(a) => event(EventKind::AuthFailed, unmapped(a), attempts, None),
        Err(_) => Parsed::Unknown,
    }
}

#[cfg(test)]
mod tests;
