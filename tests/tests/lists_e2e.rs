//! Tier 3, lists: MX-only mode with a real Postfix, a provider's SPF records served by a real
//! DNS server (dnsmasq) in the lab, refresh failures and refused shrinking, list swaps under
//! connections, and run-time edits (block with expiry) through the CLI.

use std::{
    collections::BTreeSet,
    io::Read,
    net::TcpStream,
    process::Output,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use guard_tests::lab::{
    ATTACKER4, ATTACKER6, CLIENT4, CLIENT6, Dnsmasq, Lab, MAIL4, MAIL6, Mailguard, Record, addr,
    http_get, swaks, tcp_connects,
};
use serde_json::Value;

/// A configuration for the lab: `mx_only`, extra `[lists]` keys, then list tables. Budgets never
/// refuse here (the lists are under test), and the lists' state lives in the lab directory.
fn config(lab: &Lab, mx_only: bool, list_keys: &str, tables: &str) -> String {
    format!(
        "interface = \"mg-mail0\"\nmx_only = {mx_only}\nmail_ports = [25, 2525, 465, 587, 110, 995, 143, 993]\n\
         [[open_ports]]\nport = 22\n\
         [budgets]\nsyn_ceiling = 0\n[budgets.mx]\nrate = 0\nmax_connections = 0\n\
         [budgets.submission]\nrate = 0\nmax_connections = 0\n\
         [lists]\nstate_dir = \"{}\"\n{list_keys}\n{tables}",
        lab.dir.path.join("state").display()
    )
}

fn lab() -> Lab {
    let mut lab = Lab::create();
    lab.start_services();
    lab
}

fn deliver(lab: &Lab, from: &guard_tests::netns::Netns, server: &str, port: u16, subject: &str) {
    swaks(from, server, port, subject).unwrap_or_else(|e| panic!("{subject}: {e}"));
    let postfix = lab.postfix.as_ref().expect("postfix");
    assert!(
        postfix.wait_delivered(subject, Duration::from_secs(10)),
        "`{subject}` accepted but not delivered; maillog:\n{}",
        postfix.maillog()
    );
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A list's entries (CIDR -> origins) from `mailguard <command> list --json`.
fn entries(mg: &Mailguard, command: &str) -> Vec<(String, Vec<String>, Option<u64>)> {
    let out = mg.cli(&[command, "list", "--json"]);
    assert!(
        out.status.success(),
        "{command} list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json(&out)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let origins = e["origins"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o.as_str().unwrap().to_string())
                .collect();
            (
                e["cidr"].as_str().unwrap().to_string(),
                origins,
                e["expires"].as_u64(),
            )
        })
        .collect()
}

fn cidrs(mg: &Mailguard, command: &str) -> BTreeSet<String> {
    entries(mg, command)
        .into_iter()
        .map(|(c, _, _)| c)
        .collect()
}

/// `mailguard lists refresh [--force] --json`: (ok, the report of each list).
fn refresh(mg: &Mailguard, force: bool) -> (bool, Value) {
    let mut args = vec!["lists", "refresh", "--json"];
    if force {
        args.push("--force");
    }
    let out = mg.cli(&args);
    let v = json(&out);
    assert_eq!(
        v["ok"].as_bool(),
        Some(out.status.success()),
        "exit status and `ok` agree: {v}"
    );
    (out.status.success(), v)
}

/// The refresh report of `list` in a refresh answer.
fn report<'a>(v: &'a Value, list: &str) -> &'a Value {
    v["refresh"]
        .as_array()
        .expect("refresh reports")
        .iter()
        .find(|r| r["list"] == list)
        .unwrap_or_else(|| panic!("no report for {list}: {v}"))
}

/// The summary of `list` in `status --json`.
fn summary(mg: &Mailguard, list: &str) -> Value {
    let status = mg.status();
    status["lists"]
        .as_array()
        .expect("lists")
        .iter()
        .find(|l| l["list"] == list)
        .cloned()
        .unwrap_or_else(|| panic!("no {list} in {status}"))
}

/// Whether a TCP connection from `ns` to `ip`:`port` is established (within 2 s).
fn reaches(ns: &guard_tests::netns::Netns, ip: &str, port: u16) -> bool {
    tcp_connects(ns, addr(ip, port), Duration::from_secs(2))
}

#[test]
fn mx_only_lets_only_the_provider_reach_port_25() {
    let mut lab = lab();
    let cfg = config(
        &lab,
        true,
        "",
        &format!("[lists.mx_allow]\ncidrs = [\"{CLIENT4}/32\", \"{CLIENT6}/128\"]\n"),
    );
    lab.start_mailguard(&cfg, &[]);
    for server in [MAIL4, MAIL6] {
        deliver(
            &lab,
            &lab.client.ns,
            server,
            25,
            &format!("from the provider to {server} port 25"),
        );
    }
    let denied_before = lab.mailguard().count("mx_only_denied");
    for server in [MAIL4, MAIL6] {
        assert!(
            !reaches(&lab.attacker.ns, server, 25),
            "a direct connection to {server} port 25 got through"
        );
        assert!(
            swaks(&lab.attacker.ns, server, 25, "direct").is_err(),
            "swaks delivered directly to {server}:25"
        );
        // Users still submit and read mail.
        deliver(
            &lab,
            &lab.attacker.ns,
            server,
            587,
            &format!("submission to {server} port 587"),
        );
        assert!(
            reaches(&lab.attacker.ns, server, 993),
            "{server} port 993 closed by MX-only"
        );
    }
    let mg = lab.mailguard();
    let denied = mg.count("mx_only_denied") - denied_before;
    assert!(denied >= 4, "mx_only_denied counted {denied}");
    let status = mg.status();
    assert_eq!(status["mx_only"], true);
    let mx = summary(mg, "mx_allow");
    assert_eq!(
        (mx["ipv4"].as_u64(), mx["ipv6"].as_u64()),
        (Some(1), Some(1)),
        "{mx}"
    );
    assert_eq!(
        mx["packets"].as_u64(),
        Some(mg.count("mx_only_denied")),
        "the list's packets are its reason's"
    );
    let text = String::from_utf8_lossy(&mg.cli(&["status"]).stdout).to_string();
    assert!(text.contains("MX-only ON"), "{text}");
    assert_eq!(
        (mx["ipv4_lookup"].as_str(), mx["ipv6_lookup"].as_str()),
        (Some("index"), Some("index")),
        "{mx}"
    );

    // Killed, then started with another IPv6 index size: the pinned table does not match and
    // is recreated empty; the allowlist is indexed again from the lists, the program in force
    // all along (the provider must never be refused, nor the attacker let in).
    let tables = format!("[lists.mx_allow]\ncidrs = [\"{CLIENT4}/32\", \"{CLIENT6}/128\"]\n");
    lab.mailguard.take().expect("mailguard").end(libc::SIGKILL);
    lab.start_mailguard(
        &config(&lab, true, "ipv6_index_capacity = 2048", &tables),
        &[],
    );
    let log = lab.mailguard().log().join("\n");
    assert!(
        log.contains("map MG_V6_TABLE: the pinned map has capacity"),
        "the resized table was not recreated:\n{log}"
    );
    let mx = summary(lab.mailguard(), "mx_allow");
    assert_eq!(mx["ipv6_lookup"].as_str(), Some("index"), "{mx}");
    deliver(
        &lab,
        &lab.client.ns,
        MAIL6,
        25,
        "from the provider after the IPv6 index was resized",
    );
    assert!(
        !reaches(&lab.attacker.ns, MAIL6, 25),
        "a direct connection got through after the resize"
    );
    println!(
        "mx-only: provider delivered over IPv4 and IPv6; {denied} direct packets to port 25 denied; 587 and 993 open; \
         the same after a restart that resized the IPv6 index"
    );
}

const DNS: &str = CLIENT4;

/// The provider's records: includes two levels deep, `a` with both families, `mx`, and ranges
/// in both families; plus a record that includes itself through another.
fn provider_records() -> Vec<Record<'static>> {
    use Record::*;
    vec![
        Txt(
            "provider.test",
            "v=spf1 include:_spf1.provider.test include:_spf2.provider.test -all",
        ),
        Txt(
            "_spf1.provider.test",
            "v=spf1 ip4:198.18.0.2 ip6:2001:db8::2 ip4:198.18.100.0/24 -ip4:198.18.99.0/24 ~all",
        ),
        Txt(
            "_spf2.provider.test",
            "v=spf1 a:relay.provider.test mx include:_spf3.provider.test -all",
        ),
        Addr("relay.provider.test", "198.18.101.7"),
        Addr("relay.provider.test", "2001:db8:101::7"),
        Mx("_spf2.provider.test", "mx.provider.test"),
        Addr("mx.provider.test", "198.18.102.1"),
        Txt("_spf3.provider.test", "v=spf1 ip6:2001:db8:103::/48 -all"),
        Txt("loop.test", "v=spf1 include:loop2.test -all"),
        Txt("loop2.test", "v=spf1 include:loop.test -all"),
    ]
}

const PROVIDER_RANGES: [&str; 7] = [
    "198.18.0.2/32",
    "198.18.100.0/24",
    "198.18.101.7/32",
    "198.18.102.1/32",
    "2001:db8:101::7/128",
    "2001:db8:103::/48",
    "2001:db8::2/128",
];

#[test]
fn spf_from_a_real_dns_server_gives_exactly_the_published_ranges() {
    let mut lab = lab();
    let dns = Dnsmasq::start(&lab.client.ns, DNS, &provider_records());
    let cfg = config(
        &lab,
        true,
        &format!("dns_server = \"{DNS}\""),
        "[lists.mx_allow]\nspf = [\"provider.test\"]\n[lists.trusted]\nspf = [\"loop.test\"]\n[metrics]\nlisten = \"198.18.0.1:9477\"\n",
    );
    lab.start_mailguard(&cfg, &[]);
    let mg = lab.mailguard();
    let (ok, v) = refresh(mg, false);
    assert!(!ok, "the looping trusted list must fail the refresh: {v}");
    assert_eq!(report(&v, "mx_allow")["entries"].as_u64(), Some(7), "{v}");
    let err = report(&v, "trusted")["error"]
        .as_str()
        .expect("trusted failed")
        .to_string();
    assert!(
        err.contains("SPF of loop.test")
            && err.contains("a loop")
            && err.contains("loop.test → loop2.test"),
        "{err}"
    );

    let got = entries(mg, "allow");
    let ranges: BTreeSet<String> = got.iter().map(|(c, _, _)| c.clone()).collect();
    let expected: BTreeSet<String> = PROVIDER_RANGES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        ranges, expected,
        "the MX allowlist is exactly the provider's published ranges"
    );
    assert!(got.iter().all(|(_, o, _)| o == &["fetched"]), "{got:?}");
    assert!(
        cidrs(mg, "trust").is_empty(),
        "a failed first refresh leaves the list empty"
    );

    deliver(
        &lab,
        &lab.client.ns,
        MAIL4,
        25,
        "from a published provider address",
    );
    assert!(
        !reaches(&lab.attacker.ns, MAIL4, 25),
        "an unpublished address reached port 25"
    );

    let mx = summary(mg, "mx_allow");
    assert_eq!(
        (mx["ipv4"].as_u64(), mx["ipv6"].as_u64()),
        (Some(4), Some(3)),
        "{mx}"
    );
    assert!(mx["last_refresh"].as_u64().is_some(), "{mx}");
    let trusted = summary(mg, "trusted");
    assert!(
        trusted["refresh_failures"].as_u64() >= Some(1) && trusted["last_error"].is_string(),
        "{trusted}"
    );
    let text = http_get(&lab.mail.ns, "198.18.0.1:9477", "/metrics", "text/plain");
    for series in [
        "mailguard_list_entries{list=\"mx_allow\",family=\"ipv4\"} 4",
        "mailguard_list_entries{list=\"mx_allow\",family=\"ipv6\"} 3",
        "mailguard_list_refresh_failures_total{list=\"mx_allow\"} 0",
        "mailguard_list_last_refresh_timestamp_seconds{list=\"mx_allow\"}",
        "mailguard_mx_only 1",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(series)),
            "metrics lack `{series}`:\n{text}"
        );
    }
    assert!(
        text.lines().any(|l| l
            .starts_with("mailguard_list_refresh_failures_total{list=\"trusted\"}")
            && !l.ends_with(" 0")),
        "the trusted list's failure is counted:\n{text}"
    );
    drop(dns);
    println!(
        "spf: {} ranges from provider.test through 3 includes, a and mx; the include loop reported: {err}",
        ranges.len()
    );
}

#[test]
fn refresh_failures_keep_the_last_good_list_and_shrinking_is_refused() {
    let mut lab = lab();
    let file = lab.dir.path.join("trusted.txt");
    std::fs::write(&file, "# the office\n198.18.50.0/24\n").unwrap();
    let mut dns = Some(Dnsmasq::start(&lab.client.ns, DNS, &provider_records()));
    let cfg = config(
        &lab,
        true,
        &format!("dns_server = \"{DNS}\""),
        &format!(
            "[lists.mx_allow]\nspf = [\"provider.test\"]\n[lists.trusted]\nfiles = [\"{}\"]\n",
            file.display()
        ),
    );
    lab.start_mailguard(&cfg, &[]);
    let (ok, v) = refresh(lab.mailguard(), false);
    assert!(ok, "{v}");
    let full = cidrs(lab.mailguard(), "allow");
    assert_eq!(full.len(), 7);

    // The DNS server goes away: the refresh fails, the list stays, mail still flows.
    dns.take();
    let (ok, v) = refresh(lab.mailguard(), false);
    assert!(!ok, "{v}");
    let err = report(&v, "mx_allow")["error"]
        .as_str()
        .expect("mx_allow failed")
        .to_string();
    assert!(
        err.contains("SPF of provider.test") && err.contains("198.18.0.2:53"),
        "{err}"
    );
    assert_eq!(
        cidrs(lab.mailguard(), "allow"),
        full,
        "the last good version stays in force"
    );
    let mx = summary(lab.mailguard(), "mx_allow");
    assert_eq!(mx["refresh_failures"].as_u64(), Some(1), "{mx}");
    assert!(
        mx["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("provider.test")),
        "{mx}"
    );
    deliver(&lab, &lab.client.ns, MAIL4, 25, "during a DNS outage");

    // A file with a bad line, then a missing file: reported with file and line, list kept.
    std::fs::write(&file, "198.18.50.0/24\n198.18.51.1/24\n").unwrap();
    let (_, v) = refresh(lab.mailguard(), false);
    let err = report(&v, "trusted")["error"]
        .as_str()
        .expect("trusted failed")
        .to_string();
    assert!(
        err.contains(&format!(
            "{}:2: `198.18.51.1/24` has host bits set",
            file.display()
        )),
        "{err}"
    );
    std::fs::remove_file(&file).unwrap();
    let (_, v) = refresh(lab.mailguard(), false);
    let err = report(&v, "trusted")["error"]
        .as_str()
        .expect("trusted failed")
        .to_string();
    assert!(
        err.contains("cannot read") && err.contains("trusted.txt"),
        "{err}"
    );
    assert_eq!(
        cidrs(lab.mailguard(), "trust"),
        BTreeSet::from(["198.18.50.0/24".to_string()])
    );

    // The provider's record shrinks to one address: refused, unless forced.
    let shrunk = [Record::Txt("provider.test", "v=spf1 ip4:198.18.0.2 -all")];
    dns = Some(Dnsmasq::start(&lab.client.ns, DNS, &shrunk));
    let (ok, v) = refresh(lab.mailguard(), false);
    assert!(!ok);
    let err = report(&v, "mx_allow")["error"]
        .as_str()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("refused: the update would remove 6 of 7 entries"),
        "{err}"
    );
    assert_eq!(
        cidrs(lab.mailguard(), "allow"),
        full,
        "a refused update changes nothing"
    );
    let (_, v) = refresh(lab.mailguard(), true);
    assert_eq!(report(&v, "mx_allow")["entries"].as_u64(), Some(1), "{v}");
    assert_eq!(
        cidrs(lab.mailguard(), "allow"),
        BTreeSet::from(["198.18.0.2/32".to_string()])
    );

    // NXDOMAIN is reported as such.
    drop(dns.take());
    dns = Some(Dnsmasq::start(
        &lab.client.ns,
        DNS,
        &[Record::Txt("other.test", "v=spf1 -all")],
    ));
    let (_, v) = refresh(lab.mailguard(), false);
    let err = report(&v, "mx_allow")["error"]
        .as_str()
        .expect("NXDOMAIN")
        .to_string();
    assert!(
        err.contains("provider.test does not exist (NXDOMAIN)"),
        "{err}"
    );

    // A restart with no DNS at all starts from the last good version on disk.
    drop(dns);
    lab.stop_mailguard();
    lab.start_mailguard(&cfg, &[]);
    assert_eq!(
        cidrs(lab.mailguard(), "allow"),
        BTreeSet::from(["198.18.0.2/32".to_string()])
    );
    assert_eq!(
        cidrs(lab.mailguard(), "trust"),
        BTreeSet::from(["198.18.50.0/24".to_string()])
    );
    deliver(
        &lab,
        &lab.client.ns,
        MAIL4,
        25,
        "after a restart without DNS",
    );
    println!(
        "refresh: DNS outage, bad and missing files, NXDOMAIN and a 6-of-7 shrink all kept the list in force"
    );
}

/// Connections from the client (four threads, alternating IPv4 and IPv6) to the plain listener
/// on 2525, an mx-class port, until stopped: (attempts, failures).
struct Prober {
    stop: Arc<AtomicBool>,
    attempts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Prober {
    fn start(lab: &Lab) -> Prober {
        let (stop, attempts, failures) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let threads = (0..4u64)
            .map(|n| {
                let (s, a, f) = (stop.clone(), attempts.clone(), failures.clone());
                lab.client.ns.spawn(move || {
                    let mut i = n;
                    while !s.load(Ordering::Relaxed) {
                        let to = addr(if i % 2 == 0 { MAIL4 } else { MAIL6 }, 2525);
                        i += 1;
                        a.fetch_add(1, Ordering::Relaxed);
                        let ok = TcpStream::connect_timeout(&to, Duration::from_secs(2)).is_ok_and(
                            |mut c| {
                                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                                let mut banner = String::new();
                                c.read_to_string(&mut banner).is_ok()
                                    && banner.starts_with("hello from port 2525")
                            },
                        );
                        if !ok {
                            f.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Prober {
            stop,
            attempts,
            failures,
            threads,
        }
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("prober");
        }
        (
            self.attempts.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn list_replaced_100_times_while_an_allowed_client_connects() {
    let mut lab = lab();
    lab.listen(|l| &l.mail.ns, 2525);
    let file = lab.dir.path.join("provider.txt");
    // Every version holds the client, under a different covering prefix, among 2000 other
    // prefixes that change completely from one version to the next.
    let version = |i: usize| {
        let (v4, v6) = [
            ("198.18.0.2/32", "2001:db8::2/128"),
            ("198.18.0.0/15", "2001:db8::/32"),
            ("198.18.0.0/16", "2001:db8::/48"),
            ("198.18.0.0/24", "2001:db8::/64"),
        ][i % 4];
        let mut text = format!("{v4}\n{v6}\n");
        for j in 0..2000 {
            text.push_str(&format!(
                "198.19.{}.{}/32\n",
                (i * 2000 + j) / 256 % 256,
                (i * 2000 + j) % 256
            ));
        }
        text
    };
    std::fs::write(&file, version(0)).unwrap();
    let cfg = config(
        &lab,
        true,
        "max_shrink = 1.0",
        &format!("[lists.mx_allow]\nfiles = [\"{}\"]\n", file.display()),
    );
    lab.start_mailguard(&cfg, &[]);
    let (ok, v) = refresh(lab.mailguard(), false);
    assert!(ok, "{v}");
    let prober = Prober::start(&lab);
    thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for i in 1..=100 {
        std::fs::write(&file, version(i)).unwrap();
        let (ok, v) = refresh(lab.mailguard(), false);
        assert!(ok, "swap {i}: {v}");
        assert_eq!(report(&v, "mx_allow")["entries"].as_u64(), Some(2002));
    }
    let took = started.elapsed();
    thread::sleep(Duration::from_millis(300));
    let (attempts, failures) = prober.finish();
    println!(
        "swap: 100 list replacements (2002 entries each, 4000 changed) in {took:.1?}; {attempts} connections from the allowed client, {failures} failed"
    );
    assert_eq!(
        failures, 0,
        "connections from an allowed client failed during swaps"
    );
    assert!(
        attempts > 200,
        "too few connections ({attempts}) to mean anything"
    );
    // The last version allows only the client's own addresses.
    assert!(
        !reaches(&lab.attacker.ns, MAIL4, 2525),
        "the attacker is not in the last version"
    );
    assert!(reaches(&lab.client.ns, MAIL6, 2525));
}

#[test]
fn runtime_edits_block_with_expiry_and_survive_a_restart() {
    let mut lab = lab();
    let cfg = config(&lab, false, "", "");
    lab.start_mailguard(&cfg, &[]);
    let mg = lab.mailguard();
    assert!(
        reaches(&lab.attacker.ns, MAIL4, 22),
        "SSH open before any block"
    );

    let out = mg.cli(&["block", "add", ATTACKER4, "--for", "5s", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blocked_at = Instant::now();
    assert!(
        json(&out)["message"]
            .as_str()
            .unwrap()
            .contains("added 198.18.0.66/32 to block for 5s")
    );
    let out = mg.cli(&["block", "add", ATTACKER6]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = entries(mg, "block");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed
            .iter()
            .any(|(c, o, e)| c == "198.18.0.66/32" && o == &["runtime"] && e.is_some()),
        "{listed:?}"
    );
    let quick = |ns: &guard_tests::netns::Netns, ip: &str, port: u16| {
        tcp_connects(ns, addr(ip, port), Duration::from_millis(300))
    };
    assert!(!quick(&lab.attacker.ns, MAIL4, 22), "blocked over IPv4");
    assert!(
        !quick(&lab.attacker.ns, MAIL6, 587),
        "blocked over IPv6, every port"
    );
    assert!(
        quick(&lab.client.ns, MAIL4, 22),
        "the client is not blocked"
    );
    assert!(mg.count("blocked") > 0);

    // The IPv4 block ends on time: blocked for 5 s, open within about a second after.
    let mut reopened = None;
    while blocked_at.elapsed() < Duration::from_secs(10) {
        if quick(&lab.attacker.ns, MAIL4, 22) {
            reopened = Some(blocked_at.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let reopened = reopened.expect("the 5 s block never ended");
    assert!(
        reopened >= Duration::from_millis(4500),
        "the block ended early, after {reopened:?}"
    );
    thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        cidrs(mg, "block"),
        BTreeSet::from(["2001:db8::66/128".to_string()]),
        "the expired entry is gone"
    );

    // Bad input changes nothing and says why.
    let out = mg.cli(&["block", "add", "198.18.0.1/24"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("`198.18.0.1/24` has host bits set; did you mean `198.18.0.0/24`?")
    );
    let out = mg.cli(&["block", "add", ATTACKER4, "--for", "1x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`1x` is not a duration"));
    let out = mg.cli(&["block", "del", "198.18.77.77"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("198.18.77.77/32 is not on the block list; nothing changed")
    );
    // Every source (the live sessions a block would cut: tests/faults_e2e.rs).
    let out = mg.cli(&["block", "add", "::/0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("::/0 on the block list blocks every source")
    );
    assert_eq!(cidrs(mg, "block").len(), 1, "nothing changed");

    assert!(mg.cli(&["trust", "add", CLIENT4, CLIENT6]).status.success());
    assert!(mg.cli(&["allow", "add", "198.18.0.0/24"]).status.success());

    // Run-time changes survive a restart.
    lab.stop_mailguard();
    lab.start_mailguard(&cfg, &[]);
    let mg = lab.mailguard();
    assert_eq!(
        cidrs(mg, "block"),
        BTreeSet::from(["2001:db8::66/128".to_string()])
    );
    assert_eq!(
        cidrs(mg, "trust"),
        BTreeSet::from(["198.18.0.2/32".to_string(), "2001:db8::2/128".to_string()])
    );
    assert_eq!(
        cidrs(mg, "allow"),
        BTreeSet::from(["198.18.0.0/24".to_string()])
    );
    assert!(
        !reaches(&lab.attacker.ns, MAIL6, 22),
        "still blocked after the restart"
    );
    // The block dropped the attacker's SYNs but not its neighbour discovery (as ARP is not
    // dropped): its kernel knows the mail host's link address. Without it, the first connect
    // after `block del` could fail with "No route to host".
    let neighbour = lab.attacker.ns.run(&["ip", "-6", "neigh", "show", MAIL6]);
    let neighbour = String::from_utf8_lossy(&neighbour.stdout);
    assert!(
        neighbour.contains("lladdr"),
        "neighbour discovery works while blocked: {neighbour}"
    );
    let out = mg.cli(&["block", "del", ATTACKER6]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mail = addr(MAIL6, 22);
    let connected = lab
        .attacker
        .ns
        .spawn(move || {
            std::net::TcpStream::connect_timeout(&mail, Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .join()
        .expect("client thread");
    assert_eq!(connected, Ok(()), "unblocked at once");
    println!("runtime: a 5 s block reopened after {reopened:?}; edits kept across a restart");
}
