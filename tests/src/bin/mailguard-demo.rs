//! `cargo xtask demo`: a mail host running Postfix, a legitimate client and an attacker, each in
//! its own network namespace; mailguard attached to the mail host. Shows what reaches the
//! host before and after, and the counters by reason. Everything is removed at the end, also
//! when a step fails or the demo is interrupted (Ctrl-C: the lab removes itself, see
//! guard_tests::leftovers).

use std::{
    net::SocketAddr,
    process::ExitCode,
    time::{Duration, Instant},
};

use guard_tests::lab::{
    ATTACKER4, ATTACKER6, CLIENT4, Lab, Login, MAIL_IFACE, MAIL2_4, MAIL2_6, MAIL2_IFACE, MAIL4,
    MAIL6, Scan, imap_login, nmap_syn_scan, smtp_auth, swaks, tcp_banner, tcp_connects,
};

/// The lines of mailguard's log that contain `what`, without the time and level.
fn mailguard_log_lines(lab: &Lab, what: &str) -> Vec<String> {
    lab.mailguard()
        .log()
        .into_iter()
        .filter(|l| l.contains(what))
        .map(|l| {
            l.split("msg=")
                .nth(1)
                .unwrap_or(&l)
                .trim_matches('"')
                .to_string()
        })
        .collect()
}

const CONFIG: &str = r#"# The demo's /etc/mailguard/mailguard.toml
interface = "mg-mail0"
mail_ports = [25, 465, 587, 110, 995, 143, 993]
icmp_echo = "allow"

[[open_ports]]
port = 22
# SSH only from the admins' range: the client (198.18.0.2) is in it, the attacker (.66) is not.
from = ["198.18.0.0/28", "2001:db8::/124"]

[budgets]
# SYNs a second from sources never seen completing a connection; over it, they are answered
# with SYN cookies from XDP (the default on Linux 6.0 and later, "auto", does the same).
syn_ceiling = 2000
syn_ceiling_burst = 2000
syn_cookies = "under_flood"

[budgets.mx]
rate = 50
burst = 100
max_connections = 10

[budgets.submission]
max_connections = 3
action = "reject"

# Password guessers banned at the NIC: Dovecot asks mailguard before and after every login
# (auth_policy_server_url = http://127.0.0.1:8790/), for IMAP and for Postfix's SASL.
[bans]
enabled = true
policy_listen = "127.0.0.1:8790"
"#;

const SCANNED: [u16; 9] = [22, 25, 465, 587, 993, 3306, 6379, 8080, 12345];

fn main() -> ExitCode {
    let started = Instant::now();
    let result = std::panic::catch_unwind(demo);
    println!(
        "\n== done in {:.0?}; lab removed (mailguard detached, Postfix stopped, namespaces deleted)",
        started.elapsed()
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => {
            eprintln!("demo failed (see above)");
            ExitCode::FAILURE
        }
    }
}

const STEPS: u32 = 11;

fn step(n: u32, text: &str) {
    println!("\n[{n}/{STEPS}] {text}");
}

/// Opens up to `n` TCP connections from `ns` to `to`: (opened and held, refused at once, timed out).
fn connections(
    ns: &guard_tests::netns::Netns,
    to: SocketAddr,
    n: usize,
) -> (Vec<std::net::TcpStream>, usize, usize) {
    ns.spawn(move || {
        let (mut held, mut refused, mut timed_out) = (Vec::new(), 0, 0);
        for _ in 0..n {
            match std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)) {
                Ok(s) => held.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                Err(_) => timed_out += 1,
            }
        }
        (held, refused, timed_out)
    })
    .join()
    .expect("connection thread")
}

fn show_scan(who: &str, scan: &Scan) {
    let list = |v: &[u16]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    println!(
        "      {who}: open {} | closed {} | filtered {}",
        list(&scan.open),
        list(&scan.closed),
        list(&scan.filtered)
    );
}

/// Step 10: the second MX and the LAPI join the lab; `cscli decisions add` drops the attacker
/// at both NICs, `cscli decisions delete` lets it in again.
fn fleet(lab: &mut Lab, mx_config: &str) {
    lab.add_fleet();
    lab.start_crowdsec();
    let lapi = lab.crowdsec.as_ref().expect("started");
    let url = lapi.url();
    println!(
        "      second MX {MAIL2_4} / {MAIL2_6}; CrowdSec's Local API (Debian's crowdsec, offline) at {url}"
    );
    let key = |h: &str| lab.dir.path.join(format!("bouncer-{h}.key"));
    for h in ["mx1", "mx2"] {
        lapi.bouncer_key(&format!("mailguard-{h}"), &key(h));
        println!("      cscli bouncers add mailguard-{h}  (the key in a file mailguard reads)");
    }
    let crowdsec = |h: &str| {
        format!(
            "\n[crowdsec]\nenabled = true\nlapi_url = \"{url}\"\nbouncer_key_file = \"{}\"\npoll_interval = \"1s\"\n",
            key(h).display()
        )
    };
    println!("      | [crowdsec]");
    println!("      | enabled = true");
    println!("      | lapi_url = \"{url}\"");
    println!("      | poll_interval = \"1s\"");
    lab.rewrite_mailguard_config(&format!("{mx_config}{}", crowdsec("mx1")));
    let out = lab.mailguard().cli(&["reload"]);
    println!(
        "      mx1: mailguard reload: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success(), "reload with [crowdsec] failed");
    let mx2 = format!(
        "interface = \"{MAIL2_IFACE}\"\nmail_ports = [25, 587]\n[[open_ports]]\nport = 22\n{}",
        crowdsec("mx2")
    );
    lab.start_mailguard2(&mx2);
    println!("      mx2: mailguard run (SSH open, the same [crowdsec] section)");
    let targets = [
        (
            "mx1 port 587",
            SocketAddr::new(MAIL6.parse().expect("IPv6"), 587),
        ),
        (
            "mx2 port 22",
            SocketAddr::new(MAIL2_6.parse().expect("IPv6"), 22),
        ),
    ];
    let reach =
        || targets.map(|(_, t)| tcp_connects(&lab.attacker.ns, t, Duration::from_millis(500)));
    let show = |what: &str, r: [bool; 2]| {
        for ((name, _), open) in targets.iter().zip(r) {
            println!(
                "      {what}: the attacker ({ATTACKER6}) to {name}: {}",
                if open { "connects" } else { "dropped" }
            );
        }
    };
    let before = reach();
    show("before", before);
    assert!(
        before.iter().all(|o| *o),
        "the attacker could not reach the fleet before"
    );
    let lapi = lab.crowdsec.as_ref().expect("started");
    lapi.cscli_ok(&["decisions", "add", "--ip", ATTACKER6, "--duration", "1h"]);
    let added = Instant::now();
    println!("      cscli decisions add --ip {ATTACKER6} --duration 1h");
    while reach().iter().any(|o| *o) {
        assert!(
            added.elapsed() < Duration::from_secs(10),
            "the decision was not enforced at both MX hosts"
        );
    }
    show(&format!("{:.1?} later", added.elapsed()), [false, false]);
    let out = lab
        .mailguard2
        .as_ref()
        .expect("mx2")
        .cli(&["block", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      mx2 | {line}");
    }
    lapi.cscli_ok(&["decisions", "delete", "--ip", ATTACKER6]);
    let deleted = Instant::now();
    println!("      cscli decisions delete --ip {ATTACKER6}");
    while reach() != [true, true] {
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "the deleted decision still drops the attacker"
        );
    }
    show(&format!("{:.1?} later", deleted.elapsed()), [true, true]);
}

fn demo() {
    step(
        1,
        "building the lab: mail host, client, attacker on one bridge (198.18.0.0/24, 2001:db8::/64)",
    );
    let mut lab = Lab::create();
    lab.start_services_with_auth(Some("http://127.0.0.1:8790/"));
    lab.listen(|l| &l.mail.ns, 6379);
    lab.listen(|l| &l.client.ns, 7000);
    println!(
        "      mail host {MAIL4} / {MAIL6}: Postfix on 25 and 587 (SASL through Dovecot), Dovecot IMAP on 143,"
    );
    println!("      IMAPS on 993, SSH on 22,");
    println!(
        "      and services that should never face the Internet: MySQL 3306, Redis 6379, admin 8080"
    );
    println!("      client {CLIENT4}, attacker {ATTACKER4}");

    step(2, "without mailguard, the attacker SYN-scans the mail host");
    show_scan(
        "attacker sees",
        &nmap_syn_scan(&lab.attacker.ns, MAIL4, &SCANNED),
    );
    println!("      -> the database, Redis and the admin panel are exposed");

    step(
        3,
        &format!("attaching mailguard to {MAIL_IFACE} with this configuration:"),
    );
    for line in CONFIG.lines() {
        println!("      | {line}");
    }
    lab.start_mailguard(CONFIG, &[]);
    let status = lab.mailguard().status();
    println!(
        "      attached in {} XDP mode, program id {}, {} instructions verified",
        status["mode"].as_str().unwrap_or("?"),
        status["program_id"],
        status["verified_instructions"]
    );

    step(4, "the legitimate client delivers mail with swaks");
    let postfix = lab.postfix.as_ref().expect("postfix");
    for (server, port) in [(MAIL4, 25), (MAIL6, 25), (MAIL6, 587)] {
        let subject = format!("demo message to {server} port {port}");
        let outcome = swaks(&lab.client.ns, server, port, &subject)
            .map_err(|e| e.lines().last().unwrap_or("").to_string())
            .and_then(|()| {
                if postfix.wait_delivered(&subject, Duration::from_secs(10)) {
                    Ok(())
                } else {
                    Err("not delivered".into())
                }
            });
        match outcome {
            Ok(()) => println!(
                "      {server} port {port}: accepted by Postfix and delivered to the mailbox"
            ),
            Err(e) => panic!("delivery to {server} port {port} failed: {e}"),
        }
    }
    println!("      mailbox holds {} messages", postfix.delivered().len());

    step(5, "the attacker tries again");
    let scan = nmap_syn_scan(&lab.attacker.ns, MAIL4, &SCANNED);
    show_scan("SYN scan over IPv4", &scan);
    assert_eq!(
        scan.open,
        vec![25, 587, 993],
        "mailguard should leave only the mail ports open to the attacker"
    );
    show_scan(
        "SYN scan over IPv6",
        &nmap_syn_scan(&lab.attacker.ns, MAIL6, &SCANNED),
    );
    println!(
        "      -> SSH, 3306, 6379, 8080 are dropped at the NIC; 465 is a mail port with no server (kernel RST)"
    );
    let ssh = tcp_banner(
        &lab.client.ns,
        SocketAddr::from(([198, 18, 0, 1], 22)),
        Duration::from_secs(5),
    );
    println!(
        "      the client, inside the admin range, still reaches SSH: {}",
        if ssh.is_some() { "yes" } else { "NO" }
    );
    assert!(ssh.is_some(), "SSH from the admin range failed");
    let _ = lab
        .attacker
        .ns
        .command("hping3")
        .args(["-q", "-c", "5", "-F", "-P", "-U", "-p", "25", MAIL4])
        .output();
    println!("      Xmas-flag probes to port 25 (hping3 -FPU): dropped as impossible TCP flags");
    let _ = lab
        .attacker
        .ns
        .command("hping3")
        .args(["-q", "-c", "20", "--fast", "--udp", "-p", "161", MAIL4])
        .output();
    println!("      20 UDP probes to SNMP (161): dropped, nothing on the host asked for them");
    let banner = tcp_banner(
        &lab.mail.ns,
        SocketAddr::from(([198, 18, 0, 2], 7000)),
        Duration::from_secs(5),
    );
    println!(
        "      meanwhile the mail host's own connection out to the client: {}",
        if banner.is_some() {
            "works (replies pass)"
        } else {
            "FAILED"
        }
    );
    assert!(
        banner.is_some(),
        "outbound connection from the mail host failed"
    );

    step(
        6,
        "the attacker guesses alice's password over IMAP and SMTP AUTH; alice mistypes once",
    );
    let alice = "alice@lab.test";
    let typo = imap_login(&lab.client.ns, MAIL4, alice, "alice-typo");
    let right = imap_login(&lab.client.ns, MAIL4, alice, "alice-right-pw");
    println!("      alice: a typo ({typo:?}), then the right password ({right:?})");
    assert_eq!(right, Login::Accepted, "alice could not log in");
    for i in 1..=5 {
        let guess = format!("guess-{i}");
        // SMTP AUTH first: Dovecot delays each failure from one address longer (2, 4, 8 s, ...)
        // and Postfix waits at most 10 s for Dovecot's answer; IMAP waits as long as it takes.
        let outcome = if i <= 2 {
            (
                "SMTP AUTH",
                smtp_auth(&lab.attacker.ns, MAIL4, alice, &guess),
            )
        } else {
            ("IMAP", imap_login(&lab.attacker.ns, MAIL4, alice, &guess))
        };
        println!("      attacker, {} guess {i}: {:?}", outcome.0, outcome.1);
    }
    let after = tcp_connects(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 143)),
        Duration::from_secs(2),
    );
    println!(
        "      the attacker's next connection: {}",
        if after {
            "GOT THROUGH"
        } else {
            "dropped at the NIC (banned by rule auth after 5 failures)"
        }
    );
    assert!(!after, "the password guesser was not banned");
    for line in mailguard_log_lines(&lab, "bans:") {
        println!("      log: {line}");
    }
    let right = imap_login(&lab.client.ns, MAIL4, alice, "alice-right-pw");
    println!("      alice logs in meanwhile: {right:?}");
    assert_eq!(right, Login::Accepted, "alice was locked out");
    let out = lab.mailguard().cli(&["block", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      {line}");
    }
    let out = lab.mailguard().cli(&["block", "del", ATTACKER4]);
    println!(
        "      mailguard block del {ATTACKER4} (the operator lifts the ban for the next steps): {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success(), "block del of the ban failed");

    step(
        7,
        "the attacker tries to exhaust the mail server's connections",
    );
    let (held25, refused25, dropped25) = connections(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 25)),
        20,
    );
    println!(
        "      20 connections to port 25: {} open, {dropped25} dropped (mx cap 10), {refused25} refused",
        held25.len()
    );
    let started = Instant::now();
    let (held587, refused587, _) = connections(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 587)),
        6,
    );
    println!(
        "      6 connections to port 587: {} open, {refused587} refused at once with a RST (submission cap 3, \
         action reject; {:.0?} for all six)",
        held587.len(),
        started.elapsed()
    );
    let ok = swaks(
        &lab.client.ns,
        MAIL4,
        25,
        "while the attacker hogs connections",
    )
    .is_ok();
    println!(
        "      the client's own delivery meanwhile: {}",
        if ok { "accepted" } else { "FAILED" }
    );
    assert!(
        ok,
        "the client could not deliver while the attacker held connections"
    );
    drop((held25, held587));

    step(
        8,
        "a spoofed SYN flood (trafgen, random sources in 198.19.0.0/16) while the client delivers 200 messages",
    );
    // Over the SYN ceiling: answered with a SYN cookie in XDP (`syn_cookies = "under_flood"`),
    // or dropped (before the daemon has seen the flood and made the kernel ready for cookies).
    let over_the_ceiling = |lab: &Lab| {
        let mg = lab.mailguard();
        (
            mg.count("syn_cookie"),
            mg.count("syn_cookie_unavailable") + mg.count("syn_ceiling"),
        )
    };
    let (answered0, dropped0) = over_the_ceiling(&lab);
    let before = postfix.delivered().len();
    let flood = guard_tests::lab::SpoofedFlood::start(&lab);
    std::thread::sleep(Duration::from_secs(1));
    let status = lab.mailguard().cli(&["status"]);
    if let Some(line) = String::from_utf8_lossy(&status.stdout)
        .lines()
        .find(|l| l.starts_with("SYN cookies:"))
    {
        println!("      mailguard status: {line}");
    }
    let started = Instant::now();
    let _ = lab
        .client
        .ns
        .command("timeout")
        .args([
            "60",
            "smtp-source",
            "-s",
            "5",
            "-m",
            "200",
            "-l",
            "1024",
            "-f",
            "sender@client.test",
        ])
        .args(["-t", "postmaster@lab.test", "198.18.0.1:25"])
        .output();
    let sending = started.elapsed();
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(20);
    while postfix.delivered().len() - before < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (answered, dropped) = over_the_ceiling(&lab);
    println!(
        "      {} spoofed SYNs over the SYN ceiling answered with a SYN cookie by XDP (no state kept for them, \
         none in Postfix's listen queue), {} dropped before the cookies were on; the client, a sender seen \
         before, delivered {} of 200 messages in {sending:.1?}",
        answered - answered0,
        dropped - dropped0,
        postfix.delivered().len() - before
    );

    step(
        9,
        "MX-only: the MX points at a filtering provider (the client plays it), so port 25 closes to everyone else",
    );
    let mx_config = format!(
        "{}\n[lists]\nstate_dir = \"{}\"\n\n[lists.mx_allow]\ncidrs = [\"{CLIENT4}/32\", \"2001:db8::2/128\"]\n",
        CONFIG.replace(
            "icmp_echo = \"allow\"\n",
            "icmp_echo = \"allow\"\nmx_only = true\n"
        ),
        lab.dir.path.join("state").display()
    );
    println!("      | mx_only = true");
    println!("      | [lists.mx_allow]");
    println!("      | cidrs = [\"{CLIENT4}/32\", \"2001:db8::2/128\"]");
    lab.rewrite_mailguard_config(&mx_config);
    let out = lab.mailguard().cli(&["reload"]);
    println!(
        "      mailguard reload: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success(), "reload with mx_only failed");
    let direct = tcp_connects(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 25)),
        Duration::from_secs(2),
    );
    println!(
        "      the attacker's direct connection to port 25: {}",
        if !direct {
            "dropped (mx_only_denied)"
        } else {
            "GOT THROUGH"
        }
    );
    assert!(!direct, "MX-only let the attacker reach port 25");
    let via_provider = swaks(&lab.client.ns, MAIL4, 25, "through the provider").is_ok();
    println!(
        "      mail through the provider: {}",
        if via_provider { "accepted" } else { "FAILED" }
    );
    assert!(
        via_provider,
        "the provider could not deliver in MX-only mode"
    );
    let submission = tcp_connects(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 587)),
        Duration::from_secs(2),
    );
    println!(
        "      users still reach submission (587) from anywhere: {}",
        if submission { "yes" } else { "NO" }
    );
    assert!(submission, "MX-only closed submission");
    let out = lab
        .mailguard()
        .cli(&["block", "add", ATTACKER4, "--for", "10m"]);
    println!(
        "      mailguard block add {ATTACKER4} --for 10m: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    assert!(out.status.success(), "block add failed");
    let blocked = !tcp_connects(
        &lab.attacker.ns,
        SocketAddr::from(([198, 18, 0, 1], 587)),
        Duration::from_secs(2),
    );
    println!(
        "      now even 587 is closed to the attacker: {}",
        if blocked {
            "dropped (blocked)"
        } else {
            "STILL OPEN"
        }
    );
    assert!(blocked, "the block did not take effect");
    let out = lab.mailguard().cli(&["block", "list"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      {line}");
    }

    step(
        10,
        "a fleet: a second MX with its own mailguard, both bouncers of one CrowdSec Local API",
    );
    fleet(&mut lab, &mx_config);

    step(11, "mailguard status and mailguard top");
    let out = lab.mailguard().cli(&["status"]);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      {line}");
    }
    let out = lab.mailguard().cli(&["top", "-n", "5"]);
    println!();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("      {line}");
    }
    drop(lab);
}
