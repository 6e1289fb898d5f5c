//! Tier 3, bans: password guessers and address harvesters banned at the NIC from what a real
//! Postfix and Dovecot (Debian's) see. IMAP and SMTP AUTH guessing through Dovecot's
//! authentication policy service, harvesting through Postfix's log file, the MX allowlist
//! spared, log rotation and a daemon restart mid-attack, log-injection attempts, escalation
//! and expiry on a compressed clock.

use std::{
    fs,
    net::TcpStream,
    time::{Duration, Instant},
};

use guard_tests::{
    lab::{
        ATTACKER4, CLIENT4, Lab, Login, MAIL4, Mailguard, addr, imap_login, smtp_auth,
        smtp_recipients, swaks, tcp_connects,
    },
    netns::Netns,
};
use serde_json::Value;

/// Where mailguard answers Dovecot's policy requests in the mail namespace.
const POLICY: &str = "127.0.0.1:8790";
const WRONG: &str = "not-the-password";

/// The lab's configuration: budgets that never refuse (bans are under test), SSH open, and
/// `bans` (the `[bans]` section and its rule tables).
fn config(bans: &str) -> String {
    format!(
        "interface = \"mg-mail0\"\nmail_ports = [25, 465, 587, 110, 995, 143, 993]\n\
         [[open_ports]]\nport = 22\n\
         [budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 0\n\
         [budgets.submission]\nrate = 0\nmax_connections = 0\n\
         [budgets.mailbox]\nrate = 0\nmax_connections = 0\n\
         [bans]\nenabled = true\n{bans}\n"
    )
}

fn bans_status(mg: &Mailguard) -> Value {
    mg.status()["bans"].clone()
}

fn banned(mg: &Mailguard, cidr: &str) -> bool {
    mg.block_entries().iter().any(|(c, _)| c == cidr)
}

/// Waits up to `within` for `what`.
fn eventually(within: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// From the moment this is called, SYNs to `port` from `ns` every few milliseconds until one
/// goes unanswered (dropped): the time until then.
fn time_to_first_drop(ns: &Netns, port: u16) -> Option<Duration> {
    let to = addr(MAIL4, port);
    ns.spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            let tried = Instant::now();
            if TcpStream::connect_timeout(&to, Duration::from_millis(20)).is_err() {
                // Dropped somewhere in the 20 ms it waited.
                return Some(tried.duration_since(start));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        None
    })
    .join()
    .expect("prober")
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn imap_and_smtp_auth_guessers_are_dropped_after_five_failures_and_real_users_never() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(Some(&format!("http://{POLICY}/")));
    lab.start_mailguard(&config(&format!("policy_listen = \"{POLICY}\"")), &[]);
    let mg = lab.mailguard();
    let (client, attacker) = (&lab.client.ns, &lab.attacker.ns);

    // The real user: right password; then one typo, then right again. Never banned.
    assert_eq!(
        imap_login(client, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );
    assert_eq!(
        imap_login(client, MAIL4, "alice@lab.test", "alice-typo"),
        Login::Refused
    );
    assert_eq!(
        smtp_auth(client, MAIL4, "alice@lab.test", "alice-typo2"),
        Login::Refused
    );
    assert_eq!(
        imap_login(client, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );
    assert_eq!(
        smtp_auth(client, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );

    // The guesser: SMTP AUTH, then IMAP, five failures in all (the default rule). SMTP AUTH
    // first: Dovecot delays each failure from one address longer (2, 4, 8 s, ...) and Postfix
    // waits at most 10 s for Dovecot's answer; IMAP waits as long as it takes.
    for i in 0..4 {
        let outcome = if i < 2 {
            smtp_auth(attacker, MAIL4, "alice@lab.test", WRONG)
        } else {
            imap_login(attacker, MAIL4, "alice@lab.test", WRONG)
        };
        assert_eq!(outcome, Login::Refused, "guess {i}");
        assert!(
            !banned(mg, "198.18.0.66/32"),
            "banned after {} failures",
            i + 1
        );
    }
    assert_eq!(
        imap_login(attacker, MAIL4, "alice@lab.test", WRONG),
        Login::Refused
    );
    let first_drop = time_to_first_drop(attacker, 25).expect("the guesser is dropped within 5 s");
    println!(
        "IMAP/SMTP AUTH guessing: last failure to first dropped packet: {}",
        ms(first_drop)
    );
    assert!(banned(mg, "198.18.0.66/32"));
    let entries = mg.block_entries();
    let (_, origins) = entries.iter().find(|(c, _)| c == "198.18.0.66/32").unwrap();
    assert_eq!(origins, &vec!["ban:auth".to_string()]);
    assert!(matches!(
        imap_login(attacker, MAIL4, "alice@lab.test", WRONG),
        Login::Unreachable(_)
    ));

    // The real user still gets in; nothing of theirs was banned.
    assert_eq!(
        imap_login(client, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );
    assert!(!banned(mg, "198.18.0.2/32"));
    let bans = bans_status(mg);
    assert_eq!(bans["active"], 1, "{bans}");
    assert_eq!(bans["counts"]["bans"]["auth"], 1, "{bans}");
    assert!(
        bans["counts"]["events"]["policy/auth"].as_u64().unwrap() >= 7,
        "{bans}"
    );
    // Postfix's own SASL lines are not counted again (Dovecot reported them).
    let log = mg.log().join("\n");
    assert!(
        log.contains("198.18.0.66/32 banned for 10m00s by rule auth"),
        "{log}"
    );
    // The metrics say the same.
    let metrics =
        guard_tests::lab::http_get(&lab.mail.ns, "127.0.0.1:9477", "/metrics", "text/plain");
    assert!(
        metrics.contains("mailguard_bans_total{rule=\"auth\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mailguard_ban_latency_seconds_count 1"),
        "{metrics}"
    );

    // Lifted by the operator: reachable again at once.
    let out = mg.cli(&["block", "del", "198.18.0.66/32"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        imap_login(attacker, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );
}

fn unknown(n: std::ops::Range<u32>, tag: &str) -> Vec<String> {
    n.map(|i| format!("{tag}{i}@lab.test")).collect()
}

/// The harvest configuration: Postfix's log file as the source.
fn harvest_config(lab: &Lab, extra: &str) -> String {
    let maillog = lab.postfix.as_ref().unwrap().dir.join("maillog");
    config(&format!("files = [\"{}\"]\n{extra}", maillog.display()))
}

#[test]
fn a_harvester_is_banned_a_sender_with_two_typos_is_not_and_the_mx_allowlist_is_spared() {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(&harvest_config(&lab, ""), &[]);
    let mg = lab.mailguard();
    let (client, attacker) = (&lab.client.ns, &lab.attacker.ns);

    // Two unknown recipients and a known one: a typo, not a harvest.
    let mut rcpts = unknown(0..2, "bob.typo");
    rcpts.push("postmaster@lab.test".into());
    smtp_recipients(client, MAIL4, "client.test", &rcpts).expect("the sender connects");

    // 50 unknown recipients, five a session, as harvesters go; banned on the way.
    let started = Instant::now();
    let mut sessions = 0;
    for batch in 0..10 {
        let rcpts = unknown(batch * 5..batch * 5 + 5, "harvest");
        if smtp_recipients(attacker, MAIL4, "harvester.test", &rcpts).is_err() {
            break;
        }
        sessions += 1;
    }
    println!(
        "harvest: dropped after {sessions} sessions of 5 unknown recipients ({:?})",
        started.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(2), || banned(mg, "198.18.0.66/32")),
        "the harvester is banned; maillog:\n{}",
        lab.postfix.as_ref().unwrap().maillog()
    );
    assert!(
        (2..10).contains(&sessions),
        "banned after {sessions} sessions"
    );
    assert!(!banned(mg, "198.18.0.2/32"), "two typos never ban");
    for l in mg.log().iter().filter(|l| l.contains("bans:")) {
        println!("mailguard: {l}");
    }
    swaks(client, MAIL4, 25, "after-the-harvest").expect("the sender still delivers");
    let bans = bans_status(mg);
    assert_eq!(bans["counts"]["bans"]["harvest"], 1, "{bans}");
    assert!(
        bans["counts"]["events"]["file/harvest"].as_u64().unwrap() >= 10,
        "{bans}"
    );
    drop(lab.mailguard.take());

    // The same harvest from an address in the MX allowlist: logged, never banned. (Its ban
    // from before is lifted at the start that adds it to the allowlist.)
    lab.start_mailguard(
        &format!(
            "{}\n[lists.mx_allow]\ncidrs = [\"{ATTACKER4}/32\"]\n",
            harvest_config(&lab, "")
        ),
        &[],
    );
    let mg = lab.mailguard();
    let attacker = &lab.attacker.ns;
    for batch in 20..30 {
        let rcpts = unknown(batch * 5..batch * 5 + 5, "harvest");
        smtp_recipients(attacker, MAIL4, "provider.test", &rcpts)
            .expect("the provider is never dropped");
    }
    assert!(
        eventually(Duration::from_secs(3), || {
            bans_status(mg)["counts"]["spared"]["harvest/mx_allow"].as_u64() >= Some(1)
        }),
        "{}",
        bans_status(mg)
    );
    assert!(!banned(mg, "198.18.0.66/32"));
    let log = mg.log().join("\n");
    assert!(log.contains("lifted the ban on 198.18.0.66/32"), "{log}");
    assert!(
        log.contains("rule harvest fired for 198.18.0.66/32")
            && log.contains("NOT banned: in the MX allowlist"),
        "{log}"
    );
}

/// Postfix's SASL failures from its log (no policy service): the counting source under test.
fn sasl_from_log(lab: &Lab, threshold: u32) -> String {
    harvest_config(
        lab,
        &format!(
            "[bans.rules.auth]\nthreshold = {threshold}\n[bans.rules.auth_net]\nthreshold = 0\n"
        ),
    )
}

/// One failed SMTP AUTH LOGIN on submission from inside `ns` that ends without QUIT: the
/// client closes as soon as it reads the refusal (535). A ban made from the failure's log line
/// can land before swaks' QUIT, which it then holds up until the ban ends (the QUIT's
/// retransmission gets through only then): with a ban of a few seconds, swaks would return
/// after it.
fn fail_auth_and_close(ns: &Netns) {
    use std::io::{BufRead, BufReader, Write};
    // base64 of "alice@lab.test" and of WRONG ("not-the-password"), as AUTH LOGIN sends them.
    const USER: &str = "YWxpY2VAbGFiLnRlc3Q=";
    const PASSWORD: &str = "bm90LXRoZS1wYXNzd29yZA==";
    let to = addr(MAIL4, 587);
    let result = ns
        .spawn(move || -> Result<(), String> {
            let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .map_err(|e| format!("connect {to}: {e}"))?;
            stream
                .set_read_timeout(Some(Duration::from_secs(15)))
                .map_err(|e| e.to_string())?;
            let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
            let mut writer = stream;
            // Reads one reply (its last line is `NNN text`) and checks its code.
            let mut reply = |code: &str| -> Result<(), String> {
                loop {
                    let mut line = String::new();
                    reader
                        .read_line(&mut line)
                        .map_err(|e| format!("waiting for {code}: {e}"))?;
                    if line.len() < 4 {
                        return Err(format!("waiting for {code}: `{line}`"));
                    }
                    if line.as_bytes()[3] == b' ' {
                        return match line.starts_with(code) {
                            true => Ok(()),
                            false => Err(format!("{code} expected: `{}`", line.trim_end())),
                        };
                    }
                }
            };
            reply("220")?;
            for (command, code) in [
                ("EHLO attacker.test", "250"),
                ("AUTH LOGIN", "334"),
                (USER, "334"),
                (PASSWORD, "535"),
            ] {
                writer
                    .write_all(format!("{command}\r\n").as_bytes())
                    .map_err(|e| e.to_string())?;
                reply(code)?;
            }
            Ok(())
        })
        .join()
        .expect("the AUTH client's thread");
    result.unwrap_or_else(|e| panic!("a failed AUTH on 587: {e}"));
}

fn fail_auth(ns: &Netns, n: usize) {
    for _ in 0..n {
        assert_eq!(
            smtp_auth(ns, MAIL4, "alice@lab.test", WRONG),
            Login::Refused
        );
    }
}

#[test]
fn log_rotation_and_a_restart_mid_attack_lose_no_event_and_repeat_none() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(None);
    let config = sasl_from_log(&lab, 10);
    lab.start_mailguard(&config, &[]);
    let mg = lab.mailguard();
    let attacker = &lab.attacker.ns;
    let postfix_dir = lab.postfix.as_ref().unwrap().dir.clone();
    let events = |mg: &Mailguard| {
        bans_status(mg)["counts"]["events"]["file/auth"]
            .as_u64()
            .unwrap_or(0)
    };

    fail_auth(attacker, 4);
    assert!(
        eventually(Duration::from_secs(3), || events(mg) == 4),
        "{}",
        bans_status(mg)
    );
    // Rotation as logrotate does it for Postfix: rename, then Postfix reopens its log.
    fs::rename(postfix_dir.join("maillog"), postfix_dir.join("maillog.1")).unwrap();
    fail_auth(attacker, 1); // written to the renamed file before Postfix reopens
    let reopen = lab
        .mail
        .ns
        .command("postfix")
        .arg("-c")
        .arg(postfix_dir.join("etc"))
        .arg("reload")
        .output()
        .unwrap();
    assert!(reopen.status.success());
    std::thread::sleep(Duration::from_millis(500));
    fail_auth(attacker, 2);
    assert!(
        eventually(Duration::from_secs(3), || events(mg) == 7),
        "{}",
        bans_status(mg)
    );
    // The daemon stops mid-attack (its protection stays pinned); two failures while it is away.
    let mg = lab.mailguard.take().unwrap();
    let _ = mg.end(libc::SIGTERM);
    fail_auth(attacker, 2);
    lab.start_mailguard(&config, &[]);
    let mg = lab.mailguard();
    let attacker = &lab.attacker.ns;
    // Nine in all: if a line were read twice this would already be a ban; if one were lost,
    // the tenth would not ban.
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !banned(mg, "198.18.0.66/32"),
        "banned at nine: an event was counted twice"
    );
    fail_auth(attacker, 1);
    assert!(
        eventually(Duration::from_secs(3), || banned(mg, "198.18.0.66/32")),
        "not banned at ten: an event was lost; {}",
        bans_status(mg)
    );
    drop(lab.mailguard.take());

    // A SIGKILL (no save at exit) loses nothing either: the saved counts and places agree.
    let mut lab2 = lab;
    lab2.start_mailguard(&config, &[]);
    let mg = lab2.mailguard();
    let out = mg.cli(&["block", "del", "198.18.0.66/32"]);
    assert!(out.status.success());
    fail_auth(&lab2.attacker.ns, 3);
    std::thread::sleep(Duration::from_millis(1500)); // saved within a second
    let mg = lab2.mailguard.take().unwrap();
    let _ = mg.end(libc::SIGKILL);
    fail_auth(&lab2.attacker.ns, 3);
    lab2.start_mailguard(&config, &[]);
    let mg = lab2.mailguard();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!banned(mg, "198.18.0.66/32"), "six of ten after a SIGKILL");
    fail_auth(&lab2.attacker.ns, 4);
    assert!(
        eventually(Duration::from_secs(3), || banned(mg, "198.18.0.66/32")),
        "{}",
        bans_status(mg)
    );
}

#[test]
fn user_names_and_helo_names_carrying_another_address_ban_nobody_else() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(None);
    lab.start_mailguard(&sasl_from_log(&lab, 3), &[]);
    let mg = lab.mailguard();
    let attacker = &lab.attacker.ns;
    // The attacker writes the client's address where a careless parser would take it.
    let tricks = [
        format!("unknown[{CLIENT4}]"),
        format!("x rip={CLIENT4}, lip={MAIL4}"),
        format!("warning: unknown[{CLIENT4}]: SASL LOGIN authentication failed"),
    ];
    // In HELO names and recipients (unknown ones: harvest events, too few to ban), then in
    // SASL user names (Postfix logs them after the failure). Dovecot's policy reports take
    // the address from its own `remote` field (a unit test of auth_policy.rs).
    for t in &tricks {
        smtp_recipients(attacker, MAIL4, t, &[format!("{t}@lab.test")]).expect("connects");
    }
    for t in &tricks {
        assert_eq!(smtp_auth(attacker, MAIL4, t, WRONG), Login::Refused, "{t}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let entries = mg.block_entries();
    assert!(
        entries
            .iter()
            .all(|(c, _)| c != "198.18.0.2/32" && c != "198.18.0.1/32"),
        "{entries:?}"
    );
    swaks(&lab.client.ns, MAIL4, 25, "the-client-after-the-tricks").expect("the client delivers");
    assert!(
        banned(mg, "198.18.0.66/32"),
        "the attacker's own failures ban it: {entries:?}"
    );
}

#[test]
fn monitor_mode_fires_rules_and_bans_nobody() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(None);
    lab.start_mailguard(
        &sasl_from_log(&lab, 2).replace("enabled = true", "enabled = true\nmonitor = true"),
        &[],
    );
    let mg = lab.mailguard();
    fail_auth(&lab.attacker.ns, 2);
    assert!(
        eventually(Duration::from_secs(3), || {
            bans_status(mg)["counts"]["spared"]["auth/monitor"].as_u64() == Some(1)
        }),
        "{}",
        bans_status(mg)
    );
    assert!(!banned(mg, "198.18.0.66/32"));
    assert_eq!(
        smtp_auth(&lab.attacker.ns, MAIL4, "alice@lab.test", "alice-right-pw"),
        Login::Accepted
    );
}

#[test]
fn dovecot_s_own_log_file_bans_an_imap_guesser() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(None);
    let dovecot_log = lab.dovecot.as_ref().unwrap().dir.join("dovecot.log");
    let config = config(&format!(
        "files = [\"{}\"]\n[bans.rules.auth]\nthreshold = 3\n",
        dovecot_log.display()
    ));
    lab.start_mailguard(&config, &[]);
    let mg = lab.mailguard();
    for _ in 0..3 {
        assert_eq!(
            imap_login(&lab.attacker.ns, MAIL4, "alice@lab.test", WRONG),
            Login::Refused
        );
    }
    assert!(
        eventually(Duration::from_secs(3), || banned(mg, "198.18.0.66/32")),
        "{}\n{}",
        bans_status(mg),
        lab.dovecot.as_ref().unwrap().log()
    );
    assert_eq!(bans_status(mg)["counts"]["events"]["file/auth"], 3);
}

/// Whether `ns` reaches the mail host's port 25 within `within`.
fn reachable_within(ns: &Netns, within: Duration) -> bool {
    eventually(within, || {
        tcp_connects(ns, addr(MAIL4, 25), Duration::from_millis(200))
    })
}

#[test]
fn escalation_and_expiry_on_a_compressed_clock() {
    let mut lab = Lab::create();
    lab.start_services_with_auth(None);
    // One failure bans (typos are another test's); the first offence 5 s, every later one 10 s;
    // forgotten 7 s after the last ban ended (a failed SMTP AUTH takes Postfix about 3 s). The
    // daemon, the block list's expiry in XDP and the rules are the real ones; only the
    // durations are short.
    let config = harvest_config(
        &lab,
        "forget_after = \"7s\"\n[bans.rules.auth]\nthreshold = 1\nban = [\"5s\", \"10s\"]\n\
         [bans.rules.auth_net]\nthreshold = 0\n",
    );
    lab.start_mailguard(&config, &[]);
    let mg = lab.mailguard();
    let attacker = &lab.attacker.ns;
    // The `n`th ban of `length` (seconds): in force, with that length, then ended by expiry.
    let offence = |n: usize, length: u64| {
        fail_auth_and_close(attacker);
        assert!(
            eventually(Duration::from_secs(3), || banned(mg, "198.18.0.66/32")),
            "offence {n} bans: {}",
            bans_status(mg)
        );
        // `status` publishes the bans' counts at most every quarter second: wait for this one.
        let recent = |mg: &Mailguard| {
            bans_status(mg)["recent"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(2), || recent(mg).len() == n),
            "offence {n}: {}",
            bans_status(mg)
        );
        let last = recent(mg).last().cloned().expect("a ban");
        let lasts = last["until"].as_u64().zip(last["at"].as_u64());
        assert_eq!(
            lasts.map(|(until, at)| until - at),
            Some(length),
            "offence {n}: {last}"
        );
        let length = format!("{length}s");
        let banned_at = Instant::now();
        assert!(!tcp_connects(
            attacker,
            addr(MAIL4, 25),
            Duration::from_millis(300)
        ));
        let log = mg.log().join("\n");
        let line = format!("198.18.0.66/32 banned for {length} by rule auth");
        let times = log.matches(&line).count();
        assert!(
            reachable_within(attacker, Duration::from_secs(15)),
            "offence {n}: the {length} ban never ended"
        );
        let lasted = banned_at.elapsed();
        println!("banned for {length}: reachable again {lasted:?} after the ban was seen");
        (times, lasted)
    };

    // First offence: 5 s, then the attacker is let in again by the expiry alone (the ban is
    // seen up to a few seconds after it began: Postfix answers a failure after a delay).
    let (logged, first) = offence(1, 5);
    assert_eq!(logged, 1);
    assert!(first < Duration::from_secs(7), "{first:?}");
    // Second offence, inside `forget_after`: the next step, 10 s.
    let (logged, second) = offence(2, 10);
    assert_eq!(logged, 1);
    assert!(
        second > Duration::from_secs(6) && second < Duration::from_secs(12),
        "{second:?}"
    );
    // After `forget_after` without a ban, the escalation starts again: 5 s.
    std::thread::sleep(Duration::from_secs(8));
    let (logged, third) = offence(3, 5);
    assert_eq!(logged, 2, "the second 5 s ban is logged");
    assert!(third < Duration::from_secs(7), "{third:?}");
    let bans = bans_status(mg);
    assert_eq!(bans["counts"]["bans"]["auth"], 3, "{bans}");
    assert!(
        eventually(Duration::from_secs(3), || bans_status(mg)["active"] == 0),
        "{}",
        bans_status(mg)
    );
}
