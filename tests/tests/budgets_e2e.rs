//! Tier 3, budgets: per-source SYN rates and connection caps in the namespace lab, with a real
//! Postfix, hping3, smtp-source and the real mailguard binary. Each test prints what it
//! measured.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use guard_tests::lab::{CLIENT4, Lab, MAIL4, MAIL6, SpoofedFlood, addr, swaks};

fn lab_with(config: &str, extra_args: &[&str]) -> Lab {
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(&format!("interface = \"mg-mail0\"\n{config}"), extra_args);
    lab
}

/// An SMTP connection from `ns` (optionally from a given source address), banner read.
enum Attempt {
    Open(TcpStream),
    Refused(Duration),
    TimedOut,
}

fn smtp_connect(lab: &Lab, from: Option<&str>, to: SocketAddr, timeout: Duration) -> Attempt {
    let from = from.map(str::to_string);
    lab.client
        .ns
        .spawn(move || {
            let started = Instant::now();
            let domain = if to.is_ipv6() {
                socket2::Domain::IPV6
            } else {
                socket2::Domain::IPV4
            };
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
            if let Some(f) = from {
                let a: SocketAddr = if to.is_ipv6() {
                    format!("[{f}]:0")
                } else {
                    format!("{f}:0")
                }
                .parse()
                .unwrap();
                s.bind(&a.into()).expect("bind source address");
            }
            match s.connect_timeout(&to.into(), timeout) {
                Ok(()) => {
                    let mut stream: TcpStream = s.into();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut banner = [0u8; 64];
                    let n = stream.read(&mut banner).unwrap_or(0);
                    assert!(
                        banner[..n].starts_with(b"220"),
                        "SMTP banner: {:?}",
                        String::from_utf8_lossy(&banner[..n])
                    );
                    Attempt::Open(stream)
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Attempt::Refused(started.elapsed())
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    Attempt::TimedOut
                }
                Err(e) => panic!("connect {to}: {e}"),
            }
        })
        .join()
        .expect("client thread")
}

fn open(lab: &Lab, from: Option<&str>, to: SocketAddr, what: &str) -> TcpStream {
    match smtp_connect(lab, from, to, Duration::from_secs(3)) {
        Attempt::Open(s) => s,
        Attempt::Refused(_) => panic!("{what}: refused"),
        Attempt::TimedOut => panic!("{what}: timed out"),
    }
}

/// Retries a connection until it opens; returns how long it took.
fn open_soon(lab: &Lab, to: SocketAddr, what: &str) -> (TcpStream, Duration) {
    let started = Instant::now();
    loop {
        if let Attempt::Open(s) = smtp_connect(lab, None, to, Duration::from_millis(300)) {
            return (s, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: no connection within 5 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn syn_rate_lets_burst_plus_rate_through() {
    let (rate, burst) = (20.0, 10.0);
    let lab = lab_with(
        "[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 20\nburst = 10\nmax_connections = 0\n",
        &[],
    );
    let mg = lab.mailguard();
    let (passed0, dropped0) = (mg.count("mail_new"), mg.count("syn_rate"));
    // 600 SYNs at 200 per second from one source: ten times the rate.
    let out = lab
        .client
        .ns
        .command("hping3")
        .args(["-q", "-S", "-p", "25", "-i", "u5000", "-c", "600", MAIL4])
        .output()
        .expect("hping3");
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "hping3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mg = lab.mailguard();
    let passed = mg.count("mail_new") - passed0;
    let dropped = mg.count("syn_rate") - dropped0;
    // The time from the first to the last SYN, as mailguard saw them (hping3's own pacing
    // and its pause after the last packet do not count).
    let top: serde_json::Value =
        serde_json::from_slice(&mg.cli(&["top", "--json"]).stdout).expect("top JSON");
    let row = top
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == format!("{CLIENT4}/32"))
        .expect("client in top");
    let elapsed = row["first_syn_seconds_ago"].as_f64().unwrap()
        - row["last_syn_seconds_ago"].as_f64().unwrap();
    assert_eq!(row["syns"], 600, "top counts every SYN of the source");
    let expected = burst + rate * elapsed;
    let tolerance = 0.10 * expected + 2.0;
    println!(
        "rate: 600 SYNs over {elapsed:.2} s; passed {passed}, dropped {dropped}; expected burst + rate x time = \
         {expected:.1} (tolerance +-{tolerance:.1})"
    );
    assert_eq!(
        passed + dropped,
        600,
        "every SYN is counted as passed or over the rate"
    );
    assert!(
        (passed as f64 - expected).abs() <= tolerance,
        "passed {passed}, expected {expected:.1} +- {tolerance:.1}"
    );
}

#[test]
fn connection_cap_holds_and_frees_at_once() {
    let lab = lab_with(
        "[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 3\n\
         [budgets.submission]\nrate = 0\nmax_connections = 2\naction = \"reject\"\n",
        &[],
    );
    let smtp = addr(MAIL4, 25);
    let mut held: Vec<TcpStream> = (1..=3)
        .map(|i| open(&lab, None, smtp, &format!("connection {i} of 3")))
        .collect();
    match smtp_connect(&lab, None, smtp, Duration::from_secs(2)) {
        Attempt::TimedOut => {}
        Attempt::Open(_) => panic!("the 4th connection opened beyond the cap of 3"),
        Attempt::Refused(_) => panic!("the 4th connection was refused: the mx action is drop"),
    }
    // mailguard top sees the three connections.
    let top = lab.mailguard().cli(&["top", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&top.stdout).expect("top JSON");
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["source"] == format!("{CLIENT4}/32") && r["class"] == "mx");
    assert_eq!(
        row.map(|r| r["connections"].clone()),
        Some(serde_json::json!(3)),
        "top: {rows}"
    );

    // The client closes one: Postfix sees the end of the session and closes too.
    drop(held.remove(0));
    let (s, took) = open_soon(&lab, smtp, "after the client closed one");
    println!("cap: new connection {took:?} after the client closed one");
    held.push(s);
    // The server closes one (QUIT), then the client.
    let mut quit = held.remove(0);
    quit.write_all(b"QUIT\r\n").unwrap();
    let mut rest = Vec::new();
    let _ = quit.read_to_end(&mut rest);
    drop(quit);
    let (s, took) = open_soon(&lab, smtp, "after the server closed one");
    println!("cap: new connection {took:?} after the server closed one");
    held.push(s);
    assert!(lab.mailguard().count("connection_cap") >= 1);

    // submission: cap 2 with reject: the 3rd is refused at once.
    let sub = addr(MAIL4, 587);
    let _sub: Vec<TcpStream> = (1..=2)
        .map(|i| open(&lab, None, sub, &format!("submission {i} of 2")))
        .collect();
    match smtp_connect(&lab, None, sub, Duration::from_secs(3)) {
        Attempt::Refused(t) => {
            println!("cap: 3rd submission connection refused after {t:?}");
            assert!(t < Duration::from_millis(500), "refusal took {t:?}");
        }
        Attempt::Open(_) => panic!("the 3rd submission connection opened beyond the cap of 2"),
        Attempt::TimedOut => panic!("the 3rd submission connection timed out: expected a RST"),
    }
    assert!(lab.mailguard().count("connection_cap_rejected") >= 1);
}

/// A restart with another `tracked_sources` recreates the source table beside the pinned
/// socket and count tables; the buckets' connection counts are rebuilt from the open
/// connections, so the cap still holds.
#[test]
fn cap_holds_across_a_restart_that_resizes_the_source_table() {
    let config = "interface = \"mg-mail0\"\n[budgets]\nsyn_ceiling = 0\n\
                  [budgets.mx]\nrate = 0\nmax_connections = 2\n";
    let resized = config.replace("[budgets]\n", "[budgets]\ntracked_sources = 1000\n");
    let mut lab = Lab::create();
    lab.start_services();
    lab.start_mailguard(config, &[]);
    let smtp = addr(MAIL4, 25);
    let mut held: Vec<TcpStream> = (1..=2)
        .map(|i| open(&lab, None, smtp, &format!("connection {i} of 2")))
        .collect();

    let mg = lab.mailguard.take().expect("mailguard");
    mg.end(libc::SIGKILL);
    lab.start_mailguard(&resized, &[]);
    let log = lab.mailguard().log().join("\n");
    assert!(
        log.contains("MG_SOURCES: the pinned map has capacity")
            && log.contains("MG_SOURCES: connection counts rebuilt from the 2 connections"),
        "restart log: {log}"
    );
    match smtp_connect(&lab, None, smtp, Duration::from_secs(2)) {
        Attempt::TimedOut => {}
        Attempt::Open(_) => panic!("a 3rd connection opened beyond the cap of 2 after the restart"),
        Attempt::Refused(_) => panic!("the 3rd connection was refused: the mx action is drop"),
    }
    drop(held.remove(0));
    let (s, took) = open_soon(&lab, smtp, "after one of the two closed");
    println!("resize: cap held across the restart; new connection {took:?} after one closed");
    held.push(s);
}

#[test]
fn ipv6_budget_is_per_64() {
    let lab = lab_with(
        "[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 2\n",
        &[],
    );
    // A second address in the client's /64, and an address in another /64 on the same link.
    lab.client.ns.run(&[
        "ip",
        "addr",
        "add",
        "2001:db8::3/64",
        "dev",
        &lab.client.iface,
        "nodad",
    ]);
    lab.client.ns.run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:0:1::2/64",
        "dev",
        &lab.client.iface,
        "nodad",
    ]);
    lab.mail.ns.run(&[
        "ip",
        "addr",
        "add",
        "2001:db8:0:1::1/64",
        "dev",
        &lab.mail.iface,
        "nodad",
    ]);
    let smtp = addr(MAIL6, 25);
    let _a = open(&lab, Some("2001:db8::2"), smtp, "from 2001:db8::2");
    let _b = open(&lab, Some("2001:db8::3"), smtp, "from 2001:db8::3");
    assert!(
        matches!(
            smtp_connect(&lab, Some("2001:db8::3"), smtp, Duration::from_secs(2)),
            Attempt::TimedOut
        ),
        "a third connection from the same /64 must be dropped"
    );
    let _c = open(
        &lab,
        Some("2001:db8:0:1::2"),
        addr("2001:db8:0:1::1", 25),
        "from another /64",
    );
    assert!(lab.mailguard().count("connection_cap") >= 1);
}

#[test]
fn trusted_sources_pass_beyond_the_budget() {
    let lab = lab_with(
        &format!(
            "[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 1\n[lists.trusted]\ncidrs = [\"{CLIENT4}/32\"]\n"
        ),
        &[],
    );
    let held: Vec<TcpStream> = (1..=4)
        .map(|i| open(&lab, None, addr(MAIL4, 25), &format!("trusted {i}")))
        .collect();
    assert_eq!(held.len(), 4);
    assert!(lab.mailguard().count("trusted_source") >= 4);
    assert_eq!(lab.mailguard().count("connection_cap"), 0);
}

#[test]
fn monitor_mode_refuses_nothing_and_counts() {
    let lab = lab_with(
        "[budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 1\n",
        &["--monitor"],
    );
    let held: Vec<TcpStream> = (1..=3)
        .map(|i| open(&lab, None, addr(MAIL4, 25), &format!("monitor {i}")))
        .collect();
    assert_eq!(held.len(), 3);
    assert!(
        lab.mailguard().count("connection_cap") >= 2,
        "the connections beyond the cap are counted"
    );
}

/// Ends a child process we started, by pid.
#[test]
fn legitimate_mail_flows_under_a_spoofed_syn_flood() {
    // A large sender's budget, so that the sender's own 200 connections are within it. The
    // ceiling's drop is under test (cookies_e2e answers the flood with cookies).
    let lab = lab_with(
        "[budgets]\nsyn_ceiling = 2000\nsyn_cookies = \"off\"\n\
         [budgets.mx]\nrate = 200\nburst = 200\nmax_connections = 20\n",
        &[],
    );
    // The sender has delivered here before: it is a source seen completing connections.
    swaks(&lab.client.ns, MAIL4, 25, "before the flood").expect("warm-up delivery");
    let postfix = lab.postfix.as_ref().expect("postfix");
    assert!(
        postfix.wait_delivered("before the flood", Duration::from_secs(10)),
        "warm-up delivered"
    );
    let mg = lab.mailguard();
    let ceiling0 = mg.count("syn_ceiling");
    let before = postfix.delivered().len();

    // Random sources in 198.19.0.0/16: every reply stays in the lab.
    let flood = SpoofedFlood::start(&lab);
    thread::sleep(Duration::from_secs(2));

    let messages = 1000;
    let started = Instant::now();
    let out = lab
        .client
        .ns
        .command("timeout")
        .args([
            "120",
            "smtp-source",
            "-s",
            "5",
            "-m",
            &messages.to_string(),
            "-l",
            "1024",
        ])
        .args([
            "-f",
            "sender@client.test",
            "-t",
            "postmaster@lab.test",
            &format!("{MAIL4}:25"),
        ])
        .output()
        .expect("smtp-source");
    let sending = started.elapsed();
    let flood_seconds = 2.0 + sending.as_secs_f64();
    drop(flood);

    let deadline = Instant::now() + Duration::from_secs(30);
    while postfix.delivered().len() - before < messages && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    let delivered = postfix.delivered().len() - before;
    let refused = lab.mailguard().count("syn_ceiling") - ceiling0;
    let success = delivered as f64 / messages as f64;
    println!(
        "flood: {refused} spoofed SYNs dropped by the ceiling in {flood_seconds:.1} s (~{:.0}/s); legitimate: \
         {delivered} of {messages} messages delivered ({:.1}%) in {sending:.1?}; smtp-source exit {}",
        refused as f64 / flood_seconds,
        success * 100.0,
        out.status
    );
    assert!(
        refused > 10_000,
        "the flood was too weak to mean anything: {refused} SYNs over the ceiling"
    );
    assert!(
        success >= 0.99,
        "{delivered} of {messages} delivered: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
