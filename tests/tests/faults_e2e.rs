//! Tier 3, faults: an operator's mistakes and the network's events, each reproduced with real
//! traffic, must never leave the host open while mailguard says it guards it: a start on a
//! missing interface, an interface that went away and came back, two daemons on one pin
//! directory, a reload of an empty file, a control request the daemon cannot hold.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

use guard_tests::lab::{Lab, MAIL4, SSH_PORT, addr, tcp_connects, try_http_get};

const CONFIG: &str = "interface = \"mg-mail0\"\n";
const PRIVATE: u16 = 3306;

fn lab() -> Lab {
    let mut lab = Lab::create();
    lab.start_services();
    lab
}

fn reachable(lab: &Lab, port: u16) -> bool {
    tcp_connects(&lab.client.ns, addr(MAIL4, port), Duration::from_secs(2))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_start_on_a_missing_interface_keeps_the_protection_in_force() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let first = lab.mailguard().status()["program_id"].clone();
    lab.mailguard.take().expect("mailguard").end(libc::SIGTERM);

    let out = lab.run_mailguard_to_exit(CONFIG, &["--iface", "mg-typo0"]);
    let err = stderr(&out);
    println!("faults: a start on mg-typo0: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("interface `mg-typo0`")
            && err.contains("nothing was changed")
            && err.contains("the protection in force on mg-mail0 stays"),
        "{err}"
    );
    assert!(
        !reachable(&lab, PRIVATE),
        "port {PRIVATE} open after the failed start"
    );
    assert!(reachable(&lab, 25), "mail refused after the failed start");

    // The next good start adopts what stayed.
    lab.start_mailguard(CONFIG, &[]);
    let mg = lab.mailguard();
    assert_ne!(mg.status()["program_id"], first, "the program was replaced");
    assert!(!reachable(&lab, PRIVATE));
}

#[test]
fn moving_the_protection_attaches_the_new_interface_before_the_old_one_goes() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    lab.mailguard.take().expect("mailguard").end(libc::SIGTERM);
    add_jumbo_veth(&lab);

    // The new attachment fails (native XDP refuses the MTU): the old one stays.
    let out = lab.run_mailguard_to_exit(CONFIG, &["--iface", "mg-dummy0", "--mode", "native"]);
    let err = stderr(&out);
    println!("faults: a move whose attach fails: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("mg-dummy0"), "{err}");
    assert!(
        !reachable(&lab, PRIVATE),
        "port {PRIVATE} open after the failed move"
    );

    // A move that works: the new interface is guarded, the old one let go.
    lab.start_mailguard(CONFIG, &["--iface", "mg-dummy0", "--mode", "skb"]);
    let log = lab.mailguard().log().join("\n");
    assert!(log.contains("protection moved to mg-dummy0"), "{log}");
    let dummy = lab.mail.ns.run(&["ip", "-d", "link", "show", "mg-dummy0"]);
    assert!(
        String::from_utf8_lossy(&dummy.stdout).contains("xdp"),
        "no XDP on mg-dummy0"
    );
    assert!(
        reachable(&lab, PRIVATE),
        "mg-mail0 still guarded after the move"
    );
    println!("faults: moved to mg-dummy0 after attaching there; mg-mail0 let go");
}

#[test]
fn a_restart_over_an_interface_that_was_re_created_attaches_anew() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    lab.mailguard.take().expect("mailguard").end(libc::SIGTERM);
    assert!(!reachable(&lab, PRIVATE));

    // A network restart: the device goes, and its XDP attachment with it (the pinned link is
    // severed), then a device of the same name comes back.
    lab.recreate_mail_link();
    assert!(
        reachable(&lab, PRIVATE),
        "the re-created interface carried the old attachment over (the lab is wrong)"
    );
    println!("faults: interface re-created, port {PRIVATE} reachable with no daemon running");

    lab.start_mailguard(CONFIG, &[]);
    let log = lab.mailguard().log().join("\n");
    assert!(log.contains("lost its interface"), "{log}");
    assert!(
        !reachable(&lab, PRIVATE),
        "port {PRIVATE} open after the restart"
    );
    assert!(reachable(&lab, 25), "mail refused after the restart");
    println!("faults: the restart attached anew without `unload`; port {PRIVATE} dropped again");
}

#[test]
fn the_daemon_follows_its_interface_away_and_back() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    assert!(!reachable(&lab, PRIVATE));

    let mac = lab.delete_mail_link();
    let mg = lab.mailguard();
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        let s = mg.status_any();
        if s.1["attached"] == false && !s.1["detached_since"].is_null() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "status still says attached: {}",
            s.1
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.0, Some(5), "status exit code while not attached");
    let text = mg.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("NOT ATTACHED since"), "{text}");
    let reload = mg.cli(&["reload"]);
    let reload = String::from_utf8_lossy(&reload.stdout).into_owned();
    assert!(reload.contains("is NOT guarded since"), "{reload}");
    println!(
        "faults: interface deleted: status exit 5, `{}`",
        text.lines()
            .find(|l| l.contains("NOT ATTACHED"))
            .unwrap_or("")
    );

    let back = Instant::now();
    lab.create_mail_link(&mac);
    let mut guarded = false;
    while back.elapsed() < Duration::from_secs(2) {
        let s = mg.status_any();
        if s.1["attached"] == true {
            guarded = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = back.elapsed();
    assert!(
        guarded,
        "not attached again 2 s after the interface came back"
    );
    assert!(
        !reachable(&lab, PRIVATE),
        "port {PRIVATE} open after the interface came back"
    );
    assert!(
        reachable(&lab, 25),
        "mail refused after the interface came back"
    );
    let log = mg.log().join("\n");
    assert!(
        log.contains("is NOT guarded") && log.contains("is back: guarded again"),
        "{log}"
    );
    println!(
        "faults: interface re-created: guarded again after {took:.2?}, port {PRIVATE} dropped"
    );
}

#[test]
fn a_second_daemon_on_the_same_pins_is_refused() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let pins = lab.mailguard().pin_dir.clone();
    let other_run = lab.dir.path.join("other-run");
    let out = lab
        .mail
        .ns
        .command(guard_tests::lab::mailguard_bin().to_str().expect("UTF-8"))
        .arg("--pin-dir")
        .arg(&pins)
        .arg("--run-dir")
        .arg(&other_run)
        .args(["run", "--iface", "mg-mail0"])
        .output()
        .expect("run a second mailguard");
    let err = stderr(&out);
    println!("faults: a second daemon: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("another mailguard holds the pins"), "{err}");
    let status = lab.mailguard().status();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["pid"], lab.mailguard().pid(), "{status}");
    assert!(!reachable(&lab, PRIVATE));
}

#[test]
fn a_reload_of_an_empty_file_is_refused() {
    let mut lab = lab();
    let config = format!("{CONFIG}[[open_ports]]\nport = 22\n\n[[open_ports]]\nport = 8080\n");
    lab.start_mailguard(&config, &[]);
    assert!(reachable(&lab, 8080), "8080 opened by the configuration");
    lab.rewrite_mailguard_config("");
    let out = lab.mailguard().cli(&["reload"]);
    let err = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    println!("faults: reload of an empty file: {}", err.trim());
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("holds no setting") && err.contains("the configuration in force stays"),
        "{err}"
    );
    assert!(reachable(&lab, 8080), "the opened port was closed");
    assert!(reachable(&lab, SSH_PORT), "SSH was closed");
    assert!(!reachable(&lab, PRIVATE));
}

#[test]
fn control_requests_the_daemon_cannot_hold_are_refused() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let socket = lab.mailguard().run_dir.join("control.sock");
    let ask = |line: &str| {
        let mut s = UnixStream::connect(&socket).expect("control socket");
        s.write_all(line.as_bytes()).expect("send");
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer).expect("answer");
        serde_json::from_str::<serde_json::Value>(&answer).expect("JSON answer")
    };
    // Near 2^64 seconds: the deadline overflowed, and the daemon died of it.
    let answer = ask(
        "{\"command\":\"list_edit\",\"list\":\"block\",\"add\":true,\"entries\":[\"198.19.0.1\"],\"seconds\":18446744073709551000}\n",
    );
    println!("faults: a block for 2^64 s: {answer}");
    assert_eq!(answer["ok"], false, "{answer}");
    assert!(
        answer["message"].as_str().unwrap_or("").contains("seconds"),
        "{answer}"
    );
    let answer = ask("{\"command\":\"reload\",\"confirm_within\":18446744073709551000}\n");
    assert_eq!(answer["ok"], false, "{answer}");
    let status = lab.mailguard().status();
    assert_eq!(status["running"], true, "the daemon died: {status}");
    assert!(!reachable(&lab, PRIVATE));
}

/// The daemon's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("daemon status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[test]
fn the_metrics_endpoint_cannot_be_starved_or_bloated_by_clients() {
    // The endpoint listens on loopback (the default): its clients are local processes.
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let metrics = "127.0.0.1:9477";
    let pid = lab.mailguard().pid();
    let to = addr("127.0.0.1", 9477);
    // 1000 idle connections and 10 that send a byte now and then, all held open.
    let crowd = lab.mail.ns.spawn(move || {
        let mut held = Vec::new();
        for _ in 0..1000 {
            held.push(std::net::TcpStream::connect(to).expect("idle client"));
        }
        let mut slow = Vec::new();
        for _ in 0..10 {
            slow.push(std::net::TcpStream::connect(to).expect("slow client"));
        }
        for round in 0..20 {
            for s in &mut slow {
                let _ = s.write_all(&[b"GET /metrics"[round % 12]]);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        held.len() + slow.len()
    });
    std::thread::sleep(Duration::from_millis(800));
    let started = Instant::now();
    let scrape = try_http_get(&lab.mail.ns, metrics, "/metrics", "text/plain");
    let took = started.elapsed();
    let held = crowd.join().expect("crowd");
    println!("faults: a scrape among {held} idle and slow clients answered in {took:.2?}");
    let scrape = scrape.expect("scrape");
    assert!(scrape.contains("mailguard_packets_total"), "{scrape}");
    assert!(took < Duration::from_secs(1), "the scrape took {took:?}");

    // A request header of 256 MiB without a newline.
    let before = rss_kib(pid);
    let sender = lab.mail.ns.spawn(move || {
        let mut s = std::net::TcpStream::connect(to).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nX-Filler: ")
            .expect("request line");
        let chunk = vec![b'a'; 1 << 20];
        let mut sent = 0usize;
        while sent < 256 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        sent
    });
    let mut peak = before;
    while !sender.is_finished() {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let sent = sender.join().expect("sender");
    peak = peak.max(rss_kib(pid));
    let grew = peak.saturating_sub(before);
    println!(
        "faults: a 256 MiB header: {} KiB went out before the daemon closed the connection; its RSS went from {before} to at most {peak} KiB (+{grew} KiB)",
        sent / 1024
    );
    assert!(grew < 64 * 1024, "the daemon grew by {grew} KiB");
    let again = try_http_get(&lab.mail.ns, metrics, "/metrics", "text/plain");
    assert!(again.is_ok(), "no scrape after the huge header: {again:?}");
}

/// A TCP session from the client to the mail host's port `port`, held open on both ends until
/// the returned sender is dropped.
fn hold_session(lab: &Lab, port: u16) -> std::sync::mpsc::Sender<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    lab.mail.ns.spawn(move || {
        let listener = std::net::TcpListener::bind(("0.0.0.0", port)).expect("listen");
        ready_tx.send(()).expect("ready");
        let (held, _) = listener.accept().expect("accept");
        let _ = stop_rx.recv();
        drop(held);
    });
    ready_rx.recv().expect("listener ready");
    let to = addr(MAIL4, port);
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let (stop2_tx, stop2_rx) = std::sync::mpsc::channel::<()>();
    lab.client.ns.spawn(move || {
        let s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3)).expect("connect");
        up_tx.send(()).expect("up");
        let _ = stop2_rx.recv();
        drop(s);
    });
    up_rx.recv().expect("session up");
    std::thread::sleep(Duration::from_millis(200));
    // One sender ends both ends: the listener side when this one drops too.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let _ = rx.recv();
        let _ = stop_tx.send(());
        let _ = stop2_tx.send(());
    });
    tx
}

fn answer_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn changes_that_would_cut_a_live_session_are_refused_unless_forced() {
    let mut lab = lab();
    let config = format!("{CONFIG}[[open_ports]]\nport = 22\n\n[[open_ports]]\nport = 2222\n");
    lab.start_mailguard(&config, &[]);
    let _session = hold_session(&lab, 2222);
    let mg = lab.mailguard();

    // A block holding the session's source: refused, naming the session.
    let out = mg.cli(&["block", "add", "198.18.0.0/24"]);
    let text = answer_text(&out);
    println!("faults: block add over a live session: {}", text.trim());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("live session 198.18.0.2:") && text.contains("-> port 2222"),
        "{text}"
    );
    assert_eq!(mg.count("blocked"), 0);

    // Every source: refused even without a session.
    let out = mg.cli(&["block", "add", "0.0.0.0/0"]);
    let text = answer_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("0.0.0.0/0 on the block list blocks every source"),
        "{text}"
    );

    // A reload restricting the session's port to other sources: refused; the answer carries
    // the configuration's warnings too.
    lab.rewrite_mailguard_config(&format!(
        "{CONFIG}[[open_ports]]\nport = 2222\nfrom = [\"198.18.9.0/24\"]\n"
    ));
    let out = mg.cli(&["reload"]);
    let text = answer_text(&out);
    println!("faults: reload over a live session: {}", text.trim());
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("port 2222 would accept only 198.18.9.0/24"),
        "{text}"
    );
    assert!(reachable(&lab, SSH_PORT), "SSH closed by a refused reload");
    let out = mg.cli(&["reload", "--force"]);
    let text = answer_text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        mg.log().join("\n")
    );
    assert!(
        text.contains("warning: SSH (22/tcp) is not in open_ports"),
        "{text}"
    );

    // An IPv4-mapped address is the IPv4 source it maps.
    let out = mg.cli(&["block", "add", "::ffff:198.18.0.66"]);
    assert_eq!(out.status.code(), Some(0), "{}", answer_text(&out));
    let listed = answer_text(&mg.cli(&["block", "list"]));
    assert!(listed.contains("198.18.0.66/32"), "{listed}");
}

/// Whether XDP is on the mail host's interface.
fn xdp_attached(lab: &Lab) -> bool {
    let out = lab.mail.ns.run(&["ip", "-d", "link", "show", "mg-mail0"]);
    String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
}

/// Polls `f` every 50 ms until it holds or `limit` passes; the time it took.
fn within(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if f() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[test]
fn an_unconfirmed_reload_is_rolled_back_although_the_daemon_died() {
    let mut lab = lab();
    let confirmed = format!("{CONFIG}[[open_ports]]\nport = 22\n");
    lab.start_mailguard(&confirmed, &[]);
    assert!(!reachable(&lab, 8080));
    lab.rewrite_mailguard_config(&format!("{confirmed}\n[[open_ports]]\nport = 8080\n"));
    let out = lab.mailguard().cli(&["reload", "--confirm-within", "3"]);
    assert!(out.status.success(), "{}", answer_text(&out));
    let deadline = Instant::now() + Duration::from_secs(3);
    assert!(reachable(&lab, 8080), "the reload on trial opened 8080");

    lab.mailguard.take().expect("mailguard").end(libc::SIGKILL);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    // Probes with a short timeout: a dropped SYN shows as a probe that times out.
    let quick = |port| {
        tcp_connects(
            &lab.client.ns,
            addr(MAIL4, port),
            Duration::from_millis(150),
        )
    };
    let took = within(Duration::from_secs(3), || !quick(8080));
    println!(
        "faults: SIGKILL inside a reload's confirm window: the confirmed policy back {took:?} after the deadline"
    );
    let took = took.expect("8080 still open 3 s after the deadline");
    assert!(
        took < Duration::from_secs(1),
        "rolled back {took:?} after the deadline"
    );

    // A later start does not apply the unconfirmed file silently.
    lab.start_mailguard(&format!("{confirmed}\n[[open_ports]]\nport = 8080\n"), &[]);
    let log = lab.mailguard().log().join("\n");
    assert!(log.contains("never confirmed"), "{log}");
    assert!(
        !reachable(&lab, 8080),
        "the start applied the unconfirmed file"
    );
    println!("faults: the next start kept the last confirmed configuration and said why");
}

#[test]
fn an_unconfirmed_start_is_unloaded_although_the_daemon_died() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &["--confirm-within", "3"]);
    let deadline = Instant::now() + Duration::from_secs(3);
    let pins = lab.mailguard().pin_dir.clone();
    assert!(xdp_attached(&lab));
    lab.mailguard.take().expect("mailguard").end(libc::SIGKILL);
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    let took = within(Duration::from_secs(3), || {
        !xdp_attached(&lab) && !pins.exists()
    });
    println!(
        "faults: SIGKILL inside a start's confirm window: unloaded {took:?} after the deadline"
    );
    let took = took.expect("still attached 3 s after the deadline");
    assert!(
        took < Duration::from_secs(1),
        "unloaded {took:?} after the deadline"
    );

    // The same file again, without a new window: refused.
    let out = lab.run_mailguard_to_exit(CONFIG, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("never confirmed"), "{err}");
    // Tried again on purpose: it starts.
    lab.start_mailguard(CONFIG, &["--confirm-within", "60"]);
    assert!(lab.mailguard().cli(&["confirm"]).status.success());
    assert!(!reachable(&lab, PRIVATE));
}

#[test]
fn another_xdp_program_in_the_way_is_named() {
    let lab = lab();
    // libxdp (xdp-filter) makes this lock directory in the host's bpffs and leaves it.
    let libxdp_dir = std::path::Path::new("/sys/fs/bpf/xdp");
    let had_libxdp_dir = libxdp_dir.exists();
    lab.mail
        .ns
        .run(&["xdp-filter", "load", "mg-mail0", "--mode", "skb"]);
    let out = lab.run_mailguard_to_exit(CONFIG, &[]);
    let _ = lab
        .mail
        .ns
        .command("xdp-filter")
        .args(["unload", "mg-mail0", "--all"])
        .output();
    if !had_libxdp_dir {
        // Only while empty: anything another program keeps there stays.
        let _ = std::fs::remove_dir(libxdp_dir);
    }
    let err = stderr(&out);
    println!(
        "faults: another XDP program on the interface: {}",
        err.trim()
    );
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another XDP program is attached there (id ")
            && err.contains("ip link set dev mg-mail0 xdp off"),
        "{err}"
    );
}

/// A second interface in the mail namespace, `mg-dummy0`, with an MTU too large for native XDP
/// on veth (9000): a native attach there fails.
fn add_jumbo_veth(lab: &Lab) {
    lab.mail.ns.run(&[
        "ip",
        "link",
        "add",
        "mg-dummy0",
        "mtu",
        "9000",
        "type",
        "veth",
        "peer",
        "name",
        "mg-dummy1",
        "mtu",
        "9000",
    ]);
    for dev in ["mg-dummy0", "mg-dummy1"] {
        lab.mail.ns.run(&["ip", "link", "set", dev, "up"]);
    }
}

/// The kernel's id of the map pinned at `path`.
fn pinned_map_id(path: &std::path::Path) -> u32 {
    aya::maps::MapInfo::from_pin(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .id()
}

#[test]
fn a_start_that_fails_keeps_every_pinned_map() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let maps = lab.mailguard().pin_dir.join("maps");
    lab.mailguard.take().expect("mailguard").end(libc::SIGTERM);
    let sources = maps.join("MG_SOURCES");
    let before = pinned_map_id(&sources);
    add_jumbo_veth(&lab);
    // A new table size (the source table must be made anew) and an attach that fails.
    let resized = format!("{CONFIG}[budgets]\ntracked_sources = 1024\n");
    let out = lab.run_mailguard_to_exit(&resized, &["--iface", "mg-dummy0", "--mode", "native"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        pinned_map_id(&sources),
        before,
        "the pinned source table was replaced"
    );
    assert!(
        !maps.join("MG_SOURCES_new").exists(),
        "the failed start left its new map pinned"
    );
    assert!(!reachable(&lab, PRIVATE));
    println!(
        "faults: a failed start that needed a new source table kept the pinned one (id {before})"
    );

    // The same start on the lab's interface: the new table replaces the old once it is in force.
    lab.start_mailguard(&resized, &[]);
    let log = lab.mailguard().log().join("\n");
    assert!(log.contains("a new, empty one replaces it"), "{log}");
    assert_ne!(
        pinned_map_id(&sources),
        before,
        "the source table was not replaced"
    );
    assert!(!maps.join("MG_SOURCES_new").exists());
    assert!(!reachable(&lab, PRIVATE));
}
