//! Tier 3, SYN cookies (`budgets.syn_cookies`): a client the mail host has never seen connects
//! through a cookie XDP answered, the kernel takes the cookie back (its `SyncookiesRecv`), and
//! mail is delivered through Postfix, over IPv4 and IPv6; with timestamps (window scaling kept)
//! and without; under a spoofed flood at the bench's XDP generator's top rate, no flood SYN
//! reaches the listener while a new client and a known one deliver (with `under_flood`, under
//! trafgen's).
//!
//! On a kernel with cookies made from the SYN alone (Linux 6.0) `net.ipv4.tcp_syncookies` keeps
//! the operator's value and the daemon marks the mail listeners while cookies are needed (with
//! `always`, or while a flood lasts with `under_flood`); on older kernels mailguard sets the
//! setting to 2 meanwhile, and puts the operator's value back at `unload` and after the flood.
//! These tests expect what the running kernel calls for.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use guard_tests::{
    lab::{
        Lab, MAIL_SWITCH_PORT, MAIL4, MAIL6, SpoofedFlood, addr, swaks,
        xdp_flood::{Drive, XdpFlood},
    },
    netns::Netns,
};

/// Whether this kernel lets XDP make cookies from the SYN alone (Linux 6.0).
fn cookies_from_the_syn() -> bool {
    mailguard::kernel::features::KernelFeatures::probed().bits
        & guard_common::FEATURE_RAW_SYN_COOKIE
        != 0
}

fn config(mode: &str) -> String {
    format!(
        "interface = \"mg-mail0\"\nmail_ports = [25, 587]\n[[open_ports]]\nport = 22\n\
         [budgets]\nsyn_cookies = \"{mode}\"\n"
    )
}

fn sysctl(ns: &Netns, name: &str) -> String {
    let out = ns.run(&["sysctl", "-n", name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A `TcpExt` counter of namespace `ns` (`/proc/net/netstat`).
fn tcp_ext(ns: &Netns, name: &str) -> u64 {
    let out = ns.run(&["cat", "/proc/net/netstat"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("no TcpExt {name}"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// Connects from `ns` to `to`, reads the SMTP banner, says QUIT; returns the client's window
/// scale as TCP_INFO reports it for what the server offered (`tcpi_snd_wscale`), 0 without.
fn smtp_banner(ns: &Netns, to: SocketAddr) -> Result<u8, String> {
    ns.spawn(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut banner = [0u8; 256];
        let n = s.read(&mut banner).map_err(|e| format!("banner: {e}"))?;
        let text = String::from_utf8_lossy(&banner[..n]).into_owned();
        if !text.starts_with("220 ") {
            return Err(format!("banner `{text}`"));
        }
        s.write_all(b"QUIT\r\n").map_err(|e| e.to_string())?;
        Ok(guard_tests::lab::tcp_window_scales(&s).0)
    })
    .join()
    .map_err(|_| "the client thread panicked".to_string())?
}

fn lab_with(mode: &str, timestamps: &str) -> (Lab, String) {
    let mut lab = Lab::create();
    lab.start_services();
    lab.mail.ns.run(&[
        "sysctl",
        "-q",
        &format!("net.ipv4.tcp_timestamps={timestamps}"),
    ]);
    let before = sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies");
    lab.start_mailguard(&config(mode), &[]);
    (lab, before)
}

#[test]
fn a_new_client_connects_through_a_cookie_and_delivers() {
    let (lab, before) = lab_with("always", "1");
    assert_ne!(
        before, "2",
        "the namespace starts with the kernel's default"
    );
    let mg = lab.mailguard();
    if cookies_from_the_syn() {
        assert_eq!(
            sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"),
            before,
            "cookies made from the SYN alone leave the setting as it was"
        );
        let status = String::from_utf8_lossy(&mg.cli(&["status"]).stdout).into_owned();
        assert!(
            status.contains("the listeners on ports 25, 587 are marked as sending cookies"),
            "{status}"
        );
    } else {
        assert_eq!(
            sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"),
            "2",
            "mailguard sets it while cookies are on"
        );
    }
    let received = tcp_ext(&lab.mail.ns, "SyncookiesRecv");
    let wscale = smtp_banner(&lab.client.ns, addr(MAIL4, 25)).expect("SMTP through a cookie");
    assert_eq!(mg.count("syn_cookie"), 1, "the SYN answered in XDP");
    assert_eq!(
        tcp_ext(&lab.mail.ns, "SyncookiesRecv"),
        received + 1,
        "the kernel took the cookie back"
    );
    assert_eq!(wscale, 0, "without timestamps, no window scaling");
    let metrics =
        guard_tests::lab::http_get(&lab.mail.ns, "127.0.0.1:9477", "/metrics", "text/plain");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    assert_eq!(
        value("mailguard_packets_total{reason=\"syn_cookie\",verdict=\"answer\"}"),
        1.0
    );
    // With tcp_syncookies at 2 (older kernels) the kernel's count includes the metrics request
    // itself: the kernel answers every SYN that reaches it with its own cookie, loopback
    // included.
    assert!(
        value("mailguard_syn_cookies_returned_total{outcome=\"valid\"}") >= (received + 1) as f64
    );
    assert_eq!(value("mailguard_syn_cookies_unavailable"), 0.0);
    // The client has now completed a connection: its next one is charged to its budget, no
    // cookie (IPv4 and IPv6 sources are verified apart: the IPv6 one goes through a cookie).
    swaks(&lab.client.ns, MAIL4, 25, "after a cookie").expect("delivery over IPv4");
    swaks(&lab.client.ns, MAIL6, 25, "a cookie over IPv6").expect("delivery over IPv6");
    let postfix = lab.postfix.as_ref().expect("postfix");
    for subject in ["after a cookie", "a cookie over IPv6"] {
        assert!(
            postfix.wait_delivered(subject, Duration::from_secs(10)),
            "`{subject}` not delivered; maillog:\n{}",
            postfix.maillog()
        );
    }
    assert_eq!(mg.count("syn_cookie"), 2, "one more, for the IPv6 source");
    assert!(
        mg.count("mail_new") >= 1,
        "the verified source's SYN charged"
    );
    assert_eq!(mg.count("syn_cookie_unavailable"), 0);
    let status = mg.cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    let setting = if cookies_from_the_syn() {
        "net.ipv4.tcp_syncookies as the operator set it".to_string()
    } else {
        format!("net.ipv4.tcp_syncookies set to 2 (it was {before}")
    };
    assert!(
        text.contains("SYN cookies: always, MSS only") && text.contains(&setting),
        "{text}"
    );
    // Unload puts the operator's value back.
    let out = mg.cli(&["unload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"), before);
}

#[test]
fn an_operator_s_tcp_syncookies_0_is_1_while_cookies_are_needed() {
    // 0 would make the kernel refuse every cookie ACK: mailguard sets 1 (or 2 before Linux
    // 6.0) while cookies are needed, and puts 0 back at unload.
    let mut lab = Lab::create();
    lab.start_services();
    lab.mail
        .ns
        .run(&["sysctl", "-q", "net.ipv4.tcp_syncookies=0"]);
    lab.start_mailguard(&config("always"), &[]);
    let wanted = if cookies_from_the_syn() { "1" } else { "2" };
    assert_eq!(sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"), wanted);
    let mg = lab.mailguard();
    let text = String::from_utf8_lossy(&mg.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "net.ipv4.tcp_syncookies set to {wanted} (it was 0"
        )),
        "{text}"
    );
    smtp_banner(&lab.client.ns, addr(MAIL4, 25)).expect("SMTP through a cookie");
    assert_eq!(mg.count("syn_cookie"), 1);
    let out = mg.cli(&["unload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"), "0");
}

#[test]
fn with_plain_timestamps_the_connection_keeps_window_scaling() {
    let (lab, _) = lab_with("always", "2");
    let wscale = smtp_banner(&lab.client.ns, addr(MAIL6, 25)).expect("SMTP through a cookie");
    let mg = lab.mailguard();
    assert_eq!(mg.count("syn_cookie"), 1);
    // What the server offered in the SYN-ACK XDP made is what the kernel uses: the connection
    // works (the banner came, QUIT went) with the window scale the kernel computes.
    assert!(wscale > 0, "window scaling offered and taken: {wscale}");
    let text = String::from_utf8_lossy(&mg.cli(&["status"]).stdout).into_owned();
    assert!(
        text.contains("SYN cookies: always, with timestamps"),
        "{text}"
    );
    // A large transfer through the cookie connection: Postfix takes a 2 MB message.
    swaks_big(&lab);
}

/// A 2 MB message from a source never seen over IPv4, through a cookie with timestamps.
fn swaks_big(lab: &Lab) {
    let body = "x".repeat(2_000_000);
    let out = lab
        .client
        .ns
        .command("swaks")
        .args([
            "--server",
            MAIL4,
            "--port",
            "25",
            "--to",
            "postmaster@lab.test",
            "--from",
            "sender@client.test",
            "--header",
            "Subject: big through a cookie",
            "--body",
            "-",
            "--timeout",
            "20",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(body.as_bytes())?;
            c.wait_with_output()
        })
        .expect("swaks");
    assert!(
        out.status.success(),
        "swaks: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        lab.mailguard().count("syn_cookie"),
        2,
        "its SYN answered in XDP"
    );
}

/// The kernel's listen-queue counters of the mail host: a SYN that reaches the listener and
/// finds its queues full moves one of them.
/// (`TCPReqQFullDoCookies` is not one: the kernel counts there every cookie it makes, those
/// mailguard asks for included.)
const QUEUE_COUNTERS: [&str; 3] = ["ListenOverflows", "ListenDrops", "TCPReqQFullDrop"];

#[test]
fn a_spoofed_flood_reaches_no_listener_and_mail_flows() {
    let (lab, _) = lab_with("always", "1");
    let mg = lab.mailguard();
    let postfix = lab.postfix.as_ref().expect("postfix");
    // The known client has delivered before: verified, its SYNs go to the kernel.
    swaks(&lab.client.ns, MAIL4, 25, "known before the flood").expect("a first delivery");
    assert!(postfix.wait_delivered("known before the flood", Duration::from_secs(10)));
    let queues: Vec<u64> = QUEUE_COUNTERS
        .iter()
        .map(|c| tcp_ext(&lab.mail.ns, c))
        .collect();
    let kernel_cookies = tcp_ext(&lab.mail.ns, "SyncookiesSent");
    let answered = mg.count("syn_cookie");
    // The bench's XDP generator at its top rate (as fast as the mail host's interface takes
    // frames), every SYN from a random address of 198.19.0.0/16, sent into the switch's port
    // facing the mail host (the SYN-ACKs go to the attacker's port and stay in the lab).
    let delivered0 = frames_to_the_mail_host(&lab);
    let flood = XdpFlood::start(&lab, MAIL_SWITCH_PORT, 0).expect("the XDP generator");
    let since = std::time::Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    // A client never seen before connects through a cookie and delivers, in the middle of the
    // flood: the client's namespace over IPv6 (it has delivered over IPv4 only, and sources are
    // verified per family), not the attacker's, whose link the flood fills (there a handshake's
    // last ACK, which TCP never sends again, was lost nearly every time, and the client waited
    // for a greeting the server could not send). A last ACK lost in the flood leaves a client
    // waiting the same way (with cookies, XDP's or the kernel's own, the server has no
    // connection until the client sends something), so this one may try three times.
    let attempts = new_client_delivers(&lab, "new under the flood");
    // The known client sends 100 messages over 5 sessions (at most 45 s).
    const MESSAGES: usize = 100;
    let out = lab
        .client
        .ns
        .command("timeout")
        .args([
            "45",
            "smtp-source",
            "-s",
            "5",
            "-m",
            &MESSAGES.to_string(),
            "-l",
            "1024",
            "-S",
            "known under the flood",
            "-f",
            "sender@client.test",
            "-t",
            "postmaster@lab.test",
            &format!("{MAIL4}:25"),
        ])
        .output()
        .expect("smtp-source");
    let seconds = since.elapsed().as_secs_f64();
    let drive = flood.drive().describe();
    let sent = flood.stop().expect("the XDP generator ran to the end");
    let handed = frames_to_the_mail_host(&lab) - delivered0;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let delivered = || {
        postfix
            .delivered()
            .iter()
            .filter(|m| m.contains("known under the flood"))
            .count()
    };
    while delivered() < MESSAGES && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let known = delivered();
    let cookies = mg.count("syn_cookie") - answered;
    println!(
        "cookies: the XDP generator ({drive}) sent {sent} spoofed SYNs in {seconds:.1} s ({:.0}/s), the switch handed the mail host {handed}, {cookies} answered with a cookie in XDP ({:.0}/s); the new client delivered at attempt {attempts}; the known client delivered {known} of {MESSAGES} (smtp-source: {})",
        sent as f64 / seconds,
        cookies as f64 / seconds,
        out.status
    );
    assert!(
        postfix.wait_delivered("new under the flood", Duration::from_secs(10)),
        "the new client's message"
    );
    assert!(known * 100 >= MESSAGES * 99, "{known} of {MESSAGES}");
    assert!(
        cookies as f64 / seconds >= 200_000.0,
        "the flood was too weak to mean anything: {cookies} SYNs answered in {seconds:.1} s"
    );
    // Every frame the generator got into the mail host was answered in XDP (the new client's
    // SYN over IPv6 was one more).
    assert!(
        cookies >= handed,
        "{handed} flood SYNs reached the mail host, {cookies} answered: some went past XDP"
    );
    // No flood SYN reached the listener: its queues never filled, and the kernel made cookies
    // only for the daemon's markings of its listeners (cookies from the SYN alone: the known
    // client's SYNs go through the SYN queue), or on older kernels for the known client's own
    // connections too (its SYNs reach the kernel, which answers them with its own cookies while
    // tcp_syncookies is 2), never for the flood's.
    for (c, before) in QUEUE_COUNTERS.iter().zip(&queues) {
        assert_eq!(
            tcp_ext(&lab.mail.ns, c),
            *before,
            "{c} moved during the flood"
        );
    }
    let kernel = tcp_ext(&lab.mail.ns, "SyncookiesSent") - kernel_cookies;
    let most = if cookies_from_the_syn() {
        10
    } else {
        MESSAGES as u64 + 10
    };
    assert!(
        kernel <= most,
        "the kernel made {kernel} cookies itself: flood SYNs reached it"
    );
    assert_eq!(mg.count("syn_cookie_unavailable"), 0);
}

/// Frames the switch's port has handed the mail host's interface by XDP (the generator's).
fn frames_to_the_mail_host(lab: &Lab) -> u64 {
    let out = lab.switch.run(&["ethtool", "-S", MAIL_SWITCH_PORT]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tx_queue_0_xdp_xmit: "))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// The client's namespace delivers over IPv6, a source not yet verified, within three attempts
/// (swaks' transcripts in the panic otherwise); returns the attempt that delivered.
fn new_client_delivers(lab: &Lab, subject: &str) -> usize {
    let mut tries = Vec::new();
    (1..=3)
        .find(|_| match swaks(&lab.client.ns, MAIL6, 25, subject) {
            Ok(()) => true,
            Err(e) => {
                tries.push(e);
                false
            }
        })
        .unwrap_or_else(|| panic!("a new client delivers within three attempts: {tries:#?}"))
}

/// Waits up to `within` for `what`.
fn eventually(within: Duration, mut what: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn under_flood_cookies_are_made_only_while_the_flood_lasts() {
    let mut lab = Lab::create();
    lab.start_services();
    let before = sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies");
    assert_ne!(
        before, "2",
        "the namespace starts with the kernel's default"
    );
    // `under_flood`; a ceiling trafgen spends at once, and a short hold so that the flood's end
    // is seen within the test.
    lab.start_mailguard(
        "interface = \"mg-mail0\"\nmail_ports = [25, 587]\n[[open_ports]]\nport = 22\n\
         [budgets]\nsyn_ceiling = 500\nsyn_ceiling_burst = 500\nsyn_cookies = \"under_flood\"\n\
         syn_cookies_hold = \"3s\"\n",
        &[],
    );
    let mg = lab.mailguard();
    let cookie_line = |mg: &guard_tests::lab::Mailguard| {
        let out = mg.cli(&["status"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with("SYN cookies:"))
            .unwrap_or_default()
            .to_string()
    };
    // No flood: the operator's setting stands, and every listener works as it always did.
    swaks(&lab.client.ns, MAIL4, 25, "before the flood").expect("delivery before the flood");
    assert_eq!(sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"), before);
    assert!(
        cookie_line(mg).contains("under_flood") && cookie_line(mg).contains("no SYN flood"),
        "{}",
        cookie_line(mg)
    );
    assert_eq!(mg.count("syn_cookie"), 0);

    // The flood: SYNs go over the ceiling, the daemon sees it and marks the listeners (cookies
    // from the SYN alone) or sets 2 (older kernels); until then XDP cannot make a cookie and
    // drops them, as the ceiling did; then it answers them with cookies.
    let raw = cookies_from_the_syn();
    let flood = SpoofedFlood::start(&lab);
    let began = std::time::Instant::now();
    if raw {
        assert!(
            eventually(Duration::from_secs(3), || cookie_line(mg)
                .contains("the listeners on ports 25, 587 are marked")),
            "the listeners not marked under the flood; status: {}",
            cookie_line(mg)
        );
    } else {
        assert!(
            eventually(Duration::from_secs(3), || sysctl(
                &lab.mail.ns,
                "net.ipv4.tcp_syncookies"
            ) == "2"),
            "tcp_syncookies not set under the flood; status: {}",
            cookie_line(mg)
        );
    }
    let switched = began.elapsed();
    assert!(
        eventually(Duration::from_secs(2), || cookie_line(mg)
            .contains("UNDER A SYN FLOOD")),
        "{}",
        cookie_line(mg)
    );
    if raw {
        assert_eq!(
            sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"),
            before,
            "the setting keeps the operator's value under the flood"
        );
    }
    let metrics =
        guard_tests::lab::http_get(&lab.mail.ns, "127.0.0.1:9477", "/metrics", "text/plain");
    assert!(metrics.contains("mailguard_syn_flood 1"), "{metrics}");
    if raw {
        assert!(
            metrics.contains("mailguard_syn_cookie_ports 2"),
            "25 and 587 marked: {metrics}"
        );
    }
    // A client never seen before gets in through a cookie (as above).
    let attempts = new_client_delivers(&lab, "new under under_flood");
    std::thread::sleep(Duration::from_secs(1));
    let answered = mg.count("syn_cookie");
    let dropped = mg.count("syn_cookie_unavailable");
    drop(flood);
    let ended = std::time::Instant::now();
    println!(
        "under_flood: {} {switched:?} after the flood began; {answered} SYNs answered \
         with a cookie, {dropped} dropped before that; the new client delivered at attempt {attempts}",
        if raw {
            "listeners marked"
        } else {
            "tcp_syncookies set"
        }
    );
    assert!(answered >= 10_000, "only {answered} SYNs answered");
    if raw {
        // The flood's end: seen after the hold (3 s); the setting was never touched.
        assert!(
            eventually(Duration::from_secs(8), || cookie_line(mg)
                .contains("no SYN flood")),
            "{}",
            cookie_line(mg)
        );
        let over = ended.elapsed();
        assert!(
            over >= Duration::from_secs(2),
            "over {over:?} after the flood ended, before the 3 s hold"
        );
        assert_eq!(sysctl(&lab.mail.ns, "net.ipv4.tcp_syncookies"), before);
    } else {
        // The flood's end: the operator's value back after the hold (3 s).
        assert!(
            eventually(Duration::from_secs(8), || sysctl(
                &lab.mail.ns,
                "net.ipv4.tcp_syncookies"
            ) == before),
            "tcp_syncookies not put back after the flood; status: {}",
            cookie_line(mg)
        );
        let restored = ended.elapsed();
        assert!(
            restored >= Duration::from_secs(2),
            "put back {restored:?} after the flood ended, before the 3 s hold"
        );
        assert!(
            eventually(Duration::from_secs(2), || cookie_line(mg)
                .contains("no SYN flood")),
            "{}",
            cookie_line(mg)
        );
    }
    let log = mg.log().join("\n");
    assert!(
        log.contains("SYN flood: SYNs over the ceiling are answered with SYN cookies")
            && log.contains("SYN flood over"),
        "{log}"
    );
    let postfix = lab.postfix.as_ref().expect("postfix");
    assert!(
        postfix.wait_delivered("new under under_flood", Duration::from_secs(10)),
        "the new client's message"
    );
}

/// The XDP generator's relay (its way where a kernel refuses live frames), run on every kernel:
/// its frames reach the mail host at a flood's rate, each a well-formed SYN that mailguard
/// answers with a cookie.
#[test]
fn the_xdp_generator_s_relay_floods_the_mail_host_with_well_formed_syns() {
    let (lab, _) = lab_with("always", "1");
    let mg = lab.mailguard();
    let answered = mg.count("syn_cookie");
    let delivered0 = frames_to_the_mail_host(&lab);
    let flood = XdpFlood::start_driven(&lab, MAIL_SWITCH_PORT, 0, Some(Drive::Relay))
        .expect("the XDP generator's relay");
    assert_eq!(flood.drive(), Drive::Relay);
    std::thread::sleep(Duration::from_secs(2));
    let seconds = flood.since.elapsed().as_secs_f64();
    let sent = flood.stop().expect("the relay ran to the end");
    let handed = frames_to_the_mail_host(&lab) - delivered0;
    let cookies = mg.count("syn_cookie") - answered;
    println!(
        "relay: sent {sent} SYNs in {seconds:.1} s ({:.0}/s); the switch handed the mail host {handed}; mailguard answered {cookies} with a cookie",
        sent as f64 / seconds
    );
    assert!(
        sent as f64 / seconds >= 200_000.0,
        "the relay sent {sent} SYNs in {seconds:.1} s"
    );
    assert!(
        handed * 10 >= sent * 9,
        "{handed} of the relay's {sent} SYNs reached the mail host"
    );
    assert!(
        cookies * 10 >= handed * 9,
        "mailguard answered {cookies} of the {handed} frames that reached it: the relay's SYNs are not well formed"
    );
}

/// A listener opened while cookies are needed (a mail server restarted, or a new service) is
/// marked as sending cookies at the daemon's next reading of the listeners, and a client never
/// seen before connects to it through a cookie: until the mark XDP drops its SYNs (the kernel
/// would refuse the cookie's ACK from an unmarked listener) and the client's retransmission
/// gets through.
#[test]
fn a_listener_opened_while_cookies_are_needed_takes_cookies_soon_after() {
    let mut lab = Lab::create();
    lab.start_services();
    let config = "interface = \"mg-mail0\"\nmail_ports = [25, 465, 587]\n[[open_ports]]\nport = 22\n\
                  [budgets]\nsyn_cookies = \"always\"\n";
    lab.start_mailguard(config, &[]);
    let mg = lab.mailguard();
    let status = || String::from_utf8_lossy(&mg.cli(&["status"]).stdout).into_owned();
    if cookies_from_the_syn() {
        let text = status();
        assert!(
            text.contains("the listeners on ports 25, 587 are marked as sending cookies"),
            "nothing listens on 465 yet: {text}"
        );
    }
    // A new listener on 465, in the mail host's namespace: one connection, a banner.
    let (bound_tx, bound_rx) = std::sync::mpsc::channel();
    let server = lab.mail.ns.spawn(move || -> Result<(), String> {
        let listener = std::net::TcpListener::bind("[::]:465").map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        bound_tx.send(()).map_err(|e| e.to_string())?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).map_err(|e| e.to_string())?;
                    s.write_all(b"220 a new listener\r\n")
                        .map_err(|e| e.to_string())?;
                    let mut rest = [0u8; 64];
                    let _ = s.read(&mut rest);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("no connection within 20 s".into())
    });
    bound_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the new listener is bound");
    let opened = std::time::Instant::now();
    let received = tcp_ext(&lab.mail.ns, "SyncookiesRecv");
    // The client has connected to nothing yet: a source not known, answered with a cookie.
    let connected = {
        let to = addr(MAIL4, 465);
        lab.client.ns.spawn(move || -> Result<(), String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(15))
                .map_err(|e| format!("connect {to}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut banner = [0u8; 64];
            let n = s.read(&mut banner).map_err(|e| format!("banner: {e}"))?;
            let text = String::from_utf8_lossy(&banner[..n]).into_owned();
            if !text.starts_with("220 ") {
                return Err(format!("banner `{text}`"));
            }
            s.write_all(b"QUIT\r\n").map_err(|e| e.to_string())
        })
    }
    .join()
    .expect("client thread");
    let took = opened.elapsed();
    println!("new listener: connected {took:?} after it was opened: {connected:?}");
    connected.expect("a new client connects to the new listener through a cookie");
    server
        .join()
        .expect("server thread")
        .expect("the new listener");
    assert!(mg.count("syn_cookie") >= 1, "the SYN answered in XDP");
    assert!(
        tcp_ext(&lab.mail.ns, "SyncookiesRecv") > received,
        "the kernel took the cookie back"
    );
    if cookies_from_the_syn() {
        let text = status();
        assert!(
            text.contains("the listeners on ports 25, 465, 587 are marked as sending cookies"),
            "{text}"
        );
    }
}
