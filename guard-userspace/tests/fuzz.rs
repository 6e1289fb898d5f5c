//! Property tests over everything that takes input from outside: the control socket's request
//! line, the configuration file, list files, CIDRs, durations, run-time list edits and mail log
//! lines. None may panic, whatever arrives; what they refuse is said with a bounded message. A
//! log line's event names the client the server wrote, whatever the client put in it.
//!
//! `cargo xtask test` runs each property on 256 generated inputs (proptest's default);
//! `cargo xtask fuzz` runs them on many more (`PROPTEST_CASES`). A failing input is shrunk and
//! kept in `tests/fuzz.proptest-regressions`, which proptest replays first on every later run.

use std::path::Path;

use mailguard::{
    config::durations::parse_duration,
    config::lists::{ListName, Lists, parse_list_file},
    config::{Config, parse_cidr},
    daemon::control::{Request, parse_request},
    feeds::maillog::{self, Parsed},
    feeds::saved::ListState,
};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("../../mailguard.example.toml");

/// Text made of the pieces configuration files, CIDRs and JSON are made of, and anything else.
fn texty() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        "[0-9a-f:./\\[\\]{}\",= \n#-]{0,120}",
        "(\\[\\[?[a-z_.]{1,20}\\]\\]?\n)?([a-z_]{1,16} = [^\n]{0,30}\n){0,6}",
    ]
}

proptest! {
    #[test]
    fn request_lines_never_panic(line in texty()) {
        let _ = parse_request(&line);
    }

    #[test]
    fn requests_with_any_numbers_are_checked_not_panicking(
        seconds in any::<u64>(),
        confirm in any::<u64>(),
        entries in proptest::collection::vec("[0-9a-f:./]{0,45}", 0..5),
    ) {
        let edit = serde_json::json!({
            "command": "list_edit", "list": "block", "add": true,
            "entries": entries, "seconds": seconds,
        });
        if let Ok(Request::ListEdit { seconds, .. }) = parse_request(&edit.to_string()) {
            // Accepted values are ones the daemon can hold.
            let mut state = ListState::default();
            let nets: Vec<_> = entries.iter().filter_map(|e| parse_cidr(e).ok()).collect();
            let _ = state.edit(&Lists::default(), ListName::Block, true, &nets, seconds);
        }
        let reload = serde_json::json!({ "command": "reload", "confirm_within": confirm });
        let _ = parse_request(&reload.to_string());
    }

    #[test]
    fn configuration_text_never_panics(text in texty()) {
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            let message = e.to_string();
            prop_assert!(message.starts_with("fuzz.toml"), "{}", message);
        }
    }

    #[test]
    fn the_example_configuration_mutated_never_panics(
        at in 0usize..EXAMPLE.len(),
        len in 0usize..40,
        with in ".{0,20}",
    ) {
        let mut text = EXAMPLE.as_bytes().to_vec();
        let end = (at + len).min(text.len());
        text.splice(at..end, with.bytes());
        let text = String::from_utf8_lossy(&text);
        let _ = Config::parse(&text, "fuzz.toml");
    }

    #[test]
    fn list_files_never_panic(text in texty()) {
        let _ = parse_list_file(Path::new("fuzz.list"), &text);
    }

    #[test]
    fn cidrs_and_durations_never_panic(text in texty()) {
        let _ = parse_cidr(&text);
        let _ = parse_duration(&text);
    }

    #[test]
    fn mail_log_lines_never_panic(line in texty()) {
        let _ = maillog::parse(&line);
    }

    /// Whatever a client puts where it may (Dovecot's user name, Postfix's recipient, sender
    /// and HELO), the event is the real client's or none.
    #[test]
    fn client_text_never_names_another_address(
        user in "[ -~]{0,80}",
        rcpt in "[ -~]{0,80}",
        helo in "[ -~]{0,80}",
    ) {
        let real = "198.18.7.7";
        let lines = [
            format!(
                "dovecot: imap-login: Disconnected (auth failed, 2 attempts in 3 secs): user=<{user}>, \
                 method=PLAIN, rip={real}, lip=198.18.0.1, TLS, session=<abc>"
            ),
            format!(
                "postfix/smtpd[9]: NOQUEUE: reject: RCPT from unknown[{real}]: 550 5.1.1 <{rcpt}>: \
                 Recipient address rejected: User unknown; from=<{user}> to=<{rcpt}> proto=ESMTP \
                 helo=<{helo}>"
            ),
        ];
        for line in lines {
            if let Parsed::Event(e) = maillog::parse(&line) {
                prop_assert_eq!(e.source.to_string(), real, "{}", line);
            }
        }
    }
}
