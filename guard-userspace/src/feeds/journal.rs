//! The systemd journal as a source of mail log lines: `journalctl --follow --output=json`
//! over the mail facility (Postfix and Dovecot log there by default, on Debian and Ubuntu to
//! the journal), each record turned into the line `maillog::parse` reads
//! (`IDENTIFIER[PID]: MESSAGE`), with its cursor: the checkpoint from which a restart goes on
//! (`--after-cursor`), so that no record is lost or read twice.

use serde_json::Value;

/// syslog's mail facility (`LOG_MAIL`), as the journal's `SYSLOG_FACILITY` has it.
const MAIL_FACILITY: &str = "2";

/// journalctl's arguments: follow the mail facility from `cursor`, or, on a first start, from
/// `since` (Unix seconds: when the daemon started following; old history bans nobody, and
/// what is written while journalctl starts is not missed).
pub fn journalctl_args(cursor: Option<&str>, since: u64) -> Vec<String> {
    let mut args = vec![
        "--follow".to_string(),
        "--output=json".to_string(),
        "--no-pager".to_string(),
        "--quiet".to_string(),
        format!("SYSLOG_FACILITY={MAIL_FACILITY}"),
    ];
    match cursor {
        Some(c) => args.push(format!("--after-cursor={c}")),
        None => args.push(format!("--since=@{since}")),
    }
    args
}

/// One JSON record: the line for the parser and the record's cursor. `None` for a record
/// without an identifier or message, or that is not JSON (counted by the caller).
pub fn record_line(json: &str) -> Option<(String, String)> {
    let record: Value = serde_json::from_str(json).ok()?;
    let cursor = record.get("__CURSOR")?.as_str()?.to_string();
    let identifier = record.get("SYSLOG_IDENTIFIER")?.as_str()?;
    let message = text_field(record.get("MESSAGE")?)?;
    let pid = record
        .get("SYSLOG_PID")
        .or_else(|| record.get("_PID"))
        .and_then(Value::as_str);
    // An identifier is one word: a space in it would let the message's start pass for a tag.
    if identifier.is_empty() || identifier.contains(char::is_whitespace) {
        return None;
    }
    let line = match pid {
        Some(pid) if pid.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{identifier}[{pid}]: {message}")
        }
        _ => format!("{identifier}: {message}"),
    };
    Some((line, cursor))
}

/// A journal field: a string, or (for text that is not UTF-8) an array of bytes. A message of
/// several lines stays one: the parser reads its first line only.
fn text_field(v: &Value) -> Option<String> {
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Array(bytes) => {
            let bytes: Option<Vec<u8>> = bytes
                .iter()
                .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&bytes?).into_owned()
        }
        _ => return None,
    };
    Some(text.lines().next().unwrap_or("").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feeds::maillog::{EventKind, Parsed, parse};

    #[test]
    fn records_become_the_lines_the_parser_reads() {
        let postfix = r#"{"__CURSOR":"s=abc;i=1","SYSLOG_IDENTIFIER":"postfix/submission/smtpd","SYSLOG_PID":"2211","MESSAGE":"warning: unknown[198.18.100.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6","SYSLOG_FACILITY":"2"}"#;
        let (line, cursor) = record_line(postfix).unwrap();
        assert_eq!(cursor, "s=abc;i=1");
        match parse(&line) {
            Parsed::Event(e) => {
                assert_eq!(e.kind, EventKind::AuthFailed);
                assert_eq!(e.source.to_string(), "198.18.100.7");
            }
            other => panic!("{line}: {other:?}"),
        }
        let dovecot = r#"{"__CURSOR":"s=abc;i=2","SYSLOG_IDENTIFIER":"dovecot","_PID":"90","MESSAGE":"imap-login: Disconnected (auth failed, 2 attempts in 3 secs): user=<bob>, method=PLAIN, rip=198.18.100.10, lip=198.18.0.1, session=<x>"}"#;
        let (line, _) = record_line(dovecot).unwrap();
        assert!(matches!(parse(&line), Parsed::Event(e) if e.count == 2));
    }

    #[test]
    fn byte_array_messages_and_bad_records() {
        let bytes: Vec<String> =
            "warning: unknown[198.18.100.7]: SASL LOGIN authentication failed: \u{ff}"
                .bytes()
                .map(|b| b.to_string())
                .collect();
        let rec = format!(
            r#"{{"__CURSOR":"c","SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":[{}]}}"#,
            bytes.join(",")
        );
        let (line, _) = record_line(&rec).unwrap();
        assert!(line.starts_with("postfix/smtpd: warning: unknown[198.18.100.7]"));
        assert_eq!(record_line("not json"), None);
        assert_eq!(record_line(r#"{"__CURSOR":"c","MESSAGE":"x"}"#), None);
        // An identifier with a space could make the message's start look like a tag.
        assert_eq!(
            record_line(r#"{"__CURSOR":"c","SYSLOG_IDENTIFIER":"sshd x","MESSAGE":"y"}"#),
            None
        );
        // A message of several lines: its first only.
        let multi = r#"{"__CURSOR":"c","SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":"a\npostfix/smtpd[1]: warning: unknown[198.19.0.9]: SASL LOGIN authentication failed: x"}"#;
        let (line, _) = record_line(multi).unwrap();
        assert_eq!(line, "postfix/smtpd: a");
    }

    #[test]
    fn the_command_follows_the_mail_facility_from_the_checkpoint() {
        let first = journalctl_args(None, 1_796_519_043);
        assert!(first.contains(&"--since=@1796519043".to_string()));
        assert!(first.contains(&"SYSLOG_FACILITY=2".to_string()));
        let resumed = journalctl_args(Some("s=abc;i=9"), 1_796_519_043);
        assert!(resumed.contains(&"--after-cursor=s=abc;i=9".to_string()));
        assert!(!resumed.iter().any(|a| a.starts_with("--since")));
    }
}
