//! Log lines as Postfix 3.7 and Dovecot 2.3 (Debian 12) write them, and lines an attacker
//! shaped to point at someone else.

use super::*;

fn ev(kind: EventKind, source: &str, count: u32) -> Parsed {
    Parsed::Event(Event {
        kind,
        source: source.parse().unwrap(),
        count,
        recipient: None,
    })
}

const SYSLOG: &str = "Dec  5 21:00:00 mail ";

#[test]
fn postfix_sasl_failures() {
    for line in [
        "postfix/submission/smtpd[2211]: warning: unknown[198.18.100.7]: SASL LOGIN authentication failed: UGFzc3dvcmQ6",
        "postfix/smtpd[2211]: warning: client.example.test[198.18.100.7]: SASL PLAIN authentication failed: ",
        "postfix/smtps/smtpd[9]: warning: unknown[198.18.100.7]: SASL CRAM-MD5 authentication failed: authentication failure",
    ] {
        assert_eq!(
            parse(line),
            ev(EventKind::AuthFailed, "198.18.100.7", 1),
            "{line}"
        );
        let from_file = format!("{SYSLOG}{line}");
        assert_eq!(
            parse(&from_file),
            ev(EventKind::AuthFailed, "198.18.100.7", 1)
        );
    }
    assert_eq!(
        parse(
            "postfix/submission/smtpd[1]: warning: unknown[2001:db8::7]: SASL LOGIN authentication failed: x"
        ),
        ev(EventKind::AuthFailed, "2001:db8::7", 1)
    );
    assert_eq!(
        parse(
            "postfix/smtpd[1]: warning: unknown[::ffff:198.18.100.9]: SASL LOGIN authentication failed: x"
        ),
        ev(EventKind::AuthFailed, "198.18.100.9", 1),
        "IPv4-mapped, as XDP sees it"
    );
}

#[test]
fn postfix_unknown_recipients_and_relay() {
    let line = "postfix/smtpd[3301]: NOQUEUE: reject: RCPT from unknown[198.18.100.8]: 550 5.1.1 \
                <Nobody@example.test>: Recipient address rejected: User unknown in local recipient \
                table; from=<a@b.test> to=<nobody@example.test> proto=ESMTP helo=<x>";
    assert_eq!(
        parse(line),
        Parsed::Event(Event {
            kind: EventKind::UnknownRecipient,
            source: "198.18.100.8".parse().unwrap(),
            count: 1,
            recipient: Some("nobody@example.test".into()),
        })
    );
    let queued = line.replace("NOQUEUE", "4XK2pB3Zt2z9sQ");
    assert!(matches!(parse(&queued), Parsed::Event(_)));
    let relay = "postfix/smtpd[3301]: NOQUEUE: reject: RCPT from unknown[198.18.100.8]: 454 4.7.1 \
                 <x@elsewhere.test>: Relay access denied; from=<a@b.test> to=<x@elsewhere.test> \
                 proto=ESMTP helo=<x>";
    assert_eq!(parse(relay), ev(EventKind::RelayDenied, "198.18.100.8", 1));
    let policy = "postfix/smtpd[3301]: NOQUEUE: reject: RCPT from unknown[198.18.100.8]: 554 5.7.1 \
                  Service unavailable; Client host [198.18.100.8] blocked; from=<a@b.test> \
                  to=<x@example.test> proto=ESMTP helo=<x>";
    assert_eq!(parse(policy), Parsed::Ignored);
}

#[test]
fn postscreen() {
    assert_eq!(
        parse(
            "postfix/postscreen[77]: PREGREET 11 after 0.08 from [198.18.100.9]:41234: EHLO x\\r\\n"
        ),
        ev(EventKind::Postscreen, "198.18.100.9", 1)
    );
    assert_eq!(
        parse("postfix/postscreen[77]: DNSBL rank 3 for [2001:db8::9]:41234"),
        ev(EventKind::Postscreen, "2001:db8::9", 1)
    );
    assert_eq!(
        parse("postfix/postscreen[77]: CONNECT from [198.18.100.9]:41234 to [198.18.0.1]:25"),
        Parsed::Ignored
    );
}

#[test]
fn dovecot_login_failures() {
    let line = "dovecot: imap-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<bob>, \
                method=PLAIN, rip=198.18.100.10, lip=198.18.0.1, TLS, session=<abc+/=>";
    assert_eq!(parse(line), ev(EventKind::AuthFailed, "198.18.100.10", 3));
    assert_eq!(
        parse(&format!("{SYSLOG}{line}")),
        ev(EventKind::AuthFailed, "198.18.100.10", 3)
    );
    let closed = "dovecot: imap-login: Disconnected: Connection closed (auth failed, 1 attempts in 2 \
                  secs): user=<bob>, method=PLAIN, rip=2001:db8::10, lip=2001:db8::1, session=<x>";
    assert_eq!(parse(closed), ev(EventKind::AuthFailed, "2001:db8::10", 1));
    let aborted = "dovecot: pop3-login: Login aborted: Connection closed (auth failed, 2 attempts in \
                   4 secs) (auth_failed): user=<a>, method=PLAIN, rip=198.18.100.11, lip=198.18.0.1, \
                   session=<y>";
    assert_eq!(
        parse(aborted),
        ev(EventKind::AuthFailed, "198.18.100.11", 2)
    );
    let login = "dovecot: imap-login: Login: user=<bob>, method=PLAIN, rip=198.18.100.10, \
                 lip=198.18.0.1, mpid=42, TLS, session=<z>";
    assert_eq!(parse(login), Parsed::Ignored);
    let huge = line.replace("3 attempts", "4000000000 attempts");
    assert_eq!(
        parse(&huge),
        ev(
            EventKind::AuthFailed,
            "198.18.100.10",
            MAX_ATTEMPTS_PER_LINE
        )
    );
}

/// Client-chosen text (user names, HELO, recipients, PTR-looking names) carrying another
/// address: the event, if any, is always the real client's.
#[test]
fn injected_addresses_point_at_nobody_else() {
    let victim = "198.19.113.5";
    // A user name that imitates the fields after it.
    let user = format!(
        "dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): \
         user=<x>, method=PLAIN, rip={victim}, lip=198.18.0.1, session=<s>>, method=PLAIN, \
         rip=198.18.100.66, lip=198.18.0.1, TLS, session=<real>"
    );
    assert_eq!(parse(&user), ev(EventKind::AuthFailed, "198.18.100.66", 1));
    // A user name with the address at the end of the line: whatever follows the last rip=
    // must be Dovecot's (`, lip=`), or the line is not believed.
    let tail = format!(
        "dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<x, rip={victim}>"
    );
    assert_ne!(parse(&tail), ev(EventKind::AuthFailed, victim, 1));
    // A HELO and recipient carrying a bracketed address: Postfix's client comes first.
    let helo = format!(
        "postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.18.100.66]: 550 5.1.1 \
         <unknown[{victim}]: 550 5.1.1 <a@b>: x>: Recipient address rejected: User unknown; \
         from=<a@b> to=<x> proto=ESMTP helo=<unknown[{victim}]>"
    );
    match parse(&helo) {
        Parsed::Event(e) => assert_eq!(e.source.to_string(), "198.18.100.66"),
        other => panic!("{other:?}"),
    }
    // Text before the reject that is not a queue id.
    let shifted = format!(
        "postfix/smtpd[1]: warning: x: reject: RCPT from unknown[{victim}]: 550 5.1.1 <a@b>: y"
    );
    assert!(
        !matches!(parse(&shifted), Parsed::Event(_)),
        "{:?}",
        parse(&shifted)
    );
    // A client name that is not a hostname (Postfix writes only verified names).
    let name =
        format!("postfix/smtpd[1]: warning: evil x[{victim}]: SASL LOGIN authentication failed: x");
    assert_eq!(parse(&name), Parsed::Ignored);
    // A log line of another program quoting a Postfix line.
    let quoted = format!(
        "sshd[5]: Invalid user postfix/smtpd[1]: warning: unknown[{victim}]: SASL LOGIN authentication failed"
    );
    assert_ne!(parse(&quoted), ev(EventKind::AuthFailed, victim, 1));
}

#[test]
fn unknown_shapes_are_not_guessed() {
    assert_eq!(parse(""), Parsed::Unknown);
    assert_eq!(parse("kernel: eth0 link up"), Parsed::Unknown);
    assert_eq!(
        parse("postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[not-an-ip]: 550 5.1.1 <a>: x"),
        Parsed::Unknown
    );
    assert_eq!(parse("postfix/qmgr[1]: 4XK2: removed"), Parsed::Ignored);
    assert_eq!(
        parse("dovecot: imap-login: Disconnected (auth failed, 1 attempts in 2 secs): user=<x>"),
        Parsed::Unknown,
        "a failure without an address"
    );
}

#[test]
fn the_sasl_server_s_own_trouble_is_no_guess() {
    for line in [
        "postfix/submission/smtpd[9]: warning: unknown[198.18.0.66]: SASL LOGIN authentication failed: Connection lost to authentication server, sasl_username=(unavailable)",
        "postfix/smtpd[9]: warning: unknown[198.18.0.66]: SASL CRAM-MD5 authentication failed: Invalid authentication mechanism",
    ] {
        assert_eq!(parse(line), Parsed::Ignored, "{line}");
    }
    // The user name comes after the reason and cannot make a failure look like trouble.
    let guess = "postfix/smtpd[9]: warning: unknown[198.18.0.66]: SASL LOGIN authentication failed: (reason unavailable), sasl_username=Connection lost to authentication server";
    assert!(matches!(parse(guess), Parsed::Event(_)));
}

#[test]
fn dovecot_s_own_log_file_is_read_too() {
    let line = "Dec 06 01:36:20 imap-login: Info: Disconnected: Connection closed (auth failed, 2 attempts in 1 secs): user=<rip=198.19.0.1>, method=PLAIN, rip=198.18.0.66, lip=198.18.0.1, session=<PVnUIu1hgsHGEgBC>";
    match parse(line) {
        Parsed::Event(e) => {
            assert_eq!(e.kind, EventKind::AuthFailed);
            assert_eq!(e.source.to_string(), "198.18.0.66");
            assert_eq!(e.count, 2);
        }
        other => panic!("{other:?}"),
    }
    let login = "Dec 06 01:38:13 imap-login: Info: Login: user=<alice@lab.test>, method=PLAIN, rip=198.18.0.2, lip=198.18.0.1, mpid=30328, session=<zG5jKe1hGsvGEgAC>";
    assert_eq!(parse(login), Parsed::Ignored);
    // Another program's line in the same shape is not Dovecot's.
    assert_eq!(
        parse("Dec 06 01:38:13 sshd: Info: x rip=198.18.0.9"),
        Parsed::Unknown
    );
}
