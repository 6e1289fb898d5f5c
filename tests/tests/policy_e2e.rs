//! Tier 3: end to end, in network namespaces, with a real Postfix, swaks and nmap, and the
//! real `mailguard` binary attached to the mail host's interface.
//!
//! The tests share namespace names and kernel state: a lock file serialises them (and
//! `cargo xtask test` runs them on one thread).

use std::time::Duration;

use guard_tests::lab::{
    self, CLIENT4, CLIENT6, Lab, MAIL_IFACE, MAIL4, MAIL6, addr, nmap_syn_scan, swaks, tcp_banner,
    udp_round_trip,
};

const CONFIG: &str = r#"
interface = "mg-mail0"
mail_ports = [25, 465, 587, 110, 995, 143, 993]
icmp_echo = "allow"

[[open_ports]]
port = 22
"#;

/// Ports scanned: SSH (open port), 25 and 587 (Postfix), 993 (plain listener), 465 (a mail
/// port nobody listens on), 3306 and 8080 (listeners that must not be reachable), 12345
/// (nothing there, not allowed).
const SCANNED: [u16; 8] = [22, 25, 465, 587, 993, 3306, 8080, 12345];

fn lab() -> Lab {
    let mut lab = Lab::create();
    lab.start_services();
    lab
}

#[test]
fn swaks_delivers_over_25_and_587_on_ipv4_and_ipv6() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let postfix = lab.postfix.as_ref().expect("postfix");
    for (server, port) in [(MAIL4, 25), (MAIL4, 587), (MAIL6, 25), (MAIL6, 587)] {
        let subject = format!("e2e delivery {server} port {port}");
        swaks(&lab.client.ns, server, port, &subject).unwrap_or_else(|e| panic!("{subject}: {e}"));
        assert!(
            postfix.wait_delivered(&subject, Duration::from_secs(10)),
            "`{subject}` accepted but not delivered; maillog:\n{}",
            postfix.maillog()
        );
    }
    let mg = lab.mailguard();
    assert!(
        mg.count("mail_new") >= 4,
        "four SMTP connections counted as new mail connections"
    );
    assert!(
        mg.count("mail_other") > 20,
        "the SMTP sessions' packets counted"
    );
}

#[test]
fn syn_scan_sees_exactly_mail_and_open_ports() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let before = lab.mailguard().count("tcp_not_allowed");
    for target in [MAIL4, MAIL6] {
        let scan = nmap_syn_scan(&lab.attacker.ns, target, &SCANNED);
        assert_eq!(
            scan.open,
            vec![22, 25, 587, 993],
            "open ports seen over {target}: {scan:?}"
        );
        // 465 is a mail port with no server: the SYN passes and the kernel answers RST.
        assert_eq!(
            scan.closed,
            vec![465],
            "closed ports over {target}: {scan:?}"
        );
        assert_eq!(
            scan.filtered,
            vec![3306, 8080, 12345],
            "filtered ports over {target}: {scan:?}"
        );
    }
    let dropped = lab.mailguard().count("tcp_not_allowed") - before;
    // Three ports per family, at least one probe each.
    assert!(dropped >= 6, "tcp_not_allowed grew by {dropped}");
}

#[test]
fn outbound_tcp_and_udp_of_the_mail_host_get_their_replies() {
    let mut lab = lab();
    lab.listen(|l| &l.client.ns, 7000);
    lab.udp_echo(|l| &l.client.ns, 7001);
    lab.start_mailguard(CONFIG, &[]);
    let mg = lab.mailguard();
    let (tcp0, udp0) = (mg.count("tcp_reply"), mg.count("udp_reply"));
    for client in [CLIENT4, CLIENT6] {
        let banner = tcp_banner(&lab.mail.ns, addr(client, 7000), Duration::from_secs(5));
        assert_eq!(
            banner.as_deref(),
            Some("hello from port 7000\n"),
            "TCP from the mail host to {client}:7000"
        );
        let echo = udp_round_trip(&lab.mail.ns, addr(client, 7001), Duration::from_secs(5));
        assert_eq!(
            echo.as_deref(),
            Some(&b"mailguard udp probe"[..]),
            "UDP request to {client}:7001 and its reply"
        );
    }
    let mg = lab.mailguard();
    assert!(
        mg.count("tcp_reply") >= tcp0 + 2,
        "SYN-ACKs and data of outgoing connections counted as replies"
    );
    assert_eq!(mg.count("udp_reply"), udp0 + 2, "one UDP reply per family");
    // The same ports are closed to connections the mail host did not start.
    let unsolicited = tcp_banner(&lab.client.ns, addr(MAIL4, 7000), Duration::from_secs(2));
    assert_eq!(
        unsolicited, None,
        "nothing listens on the mail host's 7000, and mailguard drops the SYN anyway"
    );
}

#[test]
fn arp_and_neighbour_discovery_keep_working() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let mg = lab.mailguard();
    let (ndp0, non_ip0) = (mg.count("ndp"), mg.count("non_ip"));
    // Forget every neighbour on both sides, then talk over both families.
    for host in [&lab.mail, &lab.client] {
        host.ns
            .run(&["ip", "-4", "neigh", "flush", "dev", &host.iface]);
        host.ns
            .run(&["ip", "-6", "neigh", "flush", "dev", &host.iface]);
    }
    for server in [MAIL4, MAIL6] {
        let banner = tcp_banner(&lab.client.ns, addr(server, 993), Duration::from_secs(5));
        assert_eq!(
            banner.as_deref(),
            Some("hello from port 993\n"),
            "client to {server}:993 after flushing neighbours"
        );
    }
    let neighbours = String::from_utf8_lossy(
        &lab.mail
            .ns
            .run(&["ip", "neigh", "show", "dev", MAIL_IFACE])
            .stdout,
    )
    .to_string();
    for client in [CLIENT4, CLIENT6] {
        let line = neighbours
            .lines()
            .find(|l| l.starts_with(&format!("{client} ")))
            .unwrap_or_else(|| {
                panic!("the mail host has no neighbour entry for {client}:\n{neighbours}")
            });
        assert!(
            !line.contains("FAILED") && !line.contains("INCOMPLETE"),
            "neighbour {client}: {line}"
        );
    }
    let mg = lab.mailguard();
    assert!(
        mg.count("ndp") > ndp0,
        "neighbour solicitations/advertisements counted and passed"
    );
    assert!(mg.count("non_ip") > non_ip0, "ARP counted and passed");
}

#[test]
fn monitor_mode_drops_nothing_and_counts_what_it_would_drop() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &["--monitor"]);
    let mg = lab.mailguard();
    assert_eq!(mg.status()["monitor"], true);
    let before = mg.count("tcp_not_allowed");
    for target in [MAIL4, MAIL6] {
        let scan = nmap_syn_scan(&lab.attacker.ns, target, &SCANNED);
        assert_eq!(
            scan.open,
            vec![22, 25, 587, 993, 3306, 8080],
            "monitor mode over {target}: {scan:?}"
        );
        assert_eq!(
            scan.closed,
            vec![465, 12345],
            "monitor mode over {target}: {scan:?}"
        );
        assert!(
            scan.filtered.is_empty(),
            "monitor mode over {target}: {scan:?}"
        );
    }
    let would_drop = lab.mailguard().count("tcp_not_allowed") - before;
    assert!(
        would_drop >= 6,
        "SYNs to 3306, 8080 and 12345 over both families counted as would-be drops: {would_drop}"
    );
}

#[test]
fn generic_mode_attaches_and_enforces() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &["--mode", "skb"]);
    assert_eq!(lab.mailguard().status()["mode"], "skb");
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", MAIL_IFACE]).stdout)
            .to_string();
    assert!(link.contains("xdpgeneric"), "generic XDP attached: {link}");
    let scan = nmap_syn_scan(&lab.attacker.ns, MAIL4, &[25, 3306]);
    assert_eq!((scan.open, scan.filtered), (vec![25], vec![3306]));
}

#[test]
fn sigterm_keeps_protection_until_unload() {
    let mut lab = lab();
    lab.start_mailguard(CONFIG, &[]);
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", MAIL_IFACE]).stdout)
            .to_string();
    assert!(link.contains("prog/xdp"), "attached: {link}");
    assert_eq!(lab.mailguard().status()["mode"], "native");
    assert_eq!(
        tcp_banner(&lab.client.ns, addr(MAIL4, 3306), Duration::from_secs(2)),
        None,
        "3306 blocked while attached"
    );

    // The daemon ends; the protection stays, and status still reads the pinned maps.
    let mg = lab.mailguard.take().expect("mailguard");
    let (pin_dir, run_dir) = (mg.pin_dir.clone(), mg.run_dir.clone());
    let status = mg.end(libc::SIGTERM);
    assert!(
        status.success(),
        "mailguard exit status after SIGTERM: {status}"
    );
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", MAIL_IFACE]).stdout)
            .to_string();
    assert!(
        link.contains("prog/xdp"),
        "protection gone with the daemon: {link}"
    );
    assert_eq!(
        tcp_banner(&lab.client.ns, addr(MAIL4, 3306), Duration::from_secs(2)),
        None,
        "3306 still blocked"
    );
    let cli = |args: &[&str]| {
        lab.mail
            .ns
            .command(lab::mailguard_bin().to_str().unwrap())
            .arg("--pin-dir")
            .arg(&pin_dir)
            .arg("--run-dir")
            .arg(&run_dir)
            .args(args)
            .output()
            .expect("mailguard CLI")
    };
    let out = cli(&["status", "--json"]);
    assert!(
        out.status.success(),
        "status without the daemon: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["running"], false);
    assert!(
        status["counters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["reason"] == "tcp_not_allowed" && c["packets"].as_u64() > Some(0))
    );

    // unload detaches and removes every pin.
    let out = cli(&["unload"]);
    assert!(
        out.status.success(),
        "unload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link =
        String::from_utf8_lossy(&lab.mail.ns.run(&["ip", "link", "show", MAIL_IFACE]).stdout)
            .to_string();
    assert!(
        !link.contains("xdp"),
        "XDP still attached after unload: {link}"
    );
    assert!(!pin_dir.exists(), "pins left in {}", pin_dir.display());
    // Unprotected again: the private port answers.
    assert_eq!(
        tcp_banner(&lab.client.ns, addr(MAIL4, 3306), Duration::from_secs(5)).as_deref(),
        Some("hello from port 3306\n")
    );
    let out = cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code 3 when nothing is loaded"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
