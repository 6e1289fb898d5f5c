//! `cargo xtask bench`: what mailguard costs and what it protects, measured on this machine,
//! written to the path given as the first argument (docs/BENCHMARKS.md), with PNG plots in
//! `bench/` beside it.
//!
//! 1. Per-packet cost under BPF_PROG_TEST_RUN of mailguard, the floor (an XDP program that only
//!    returns XDP_DROP, same toolchain) and xdp-filter (the closest XDP peer, `peer.rs`), on
//!    identical packets, trials rotating (`measure.rs`).
//! 2. A mail SYN from a new source (the insert path), by single runs over many sources, and
//!    against the size of the rate table (`table_size.rs`).
//! 3. The cost of a budget-charged SYN with 1 thousand to 1 million tracked sources.
//! 4. The lists: loading and swapping up to a million prefixes, and the lookups' per-packet cost
//!    at every size (`lists.rs`).
//! 5. The cost sock_ops adds per connection, from the kernel's run-time statistics.
//! 6. On the wire: legitimate mail under a random-source SYN flood at several rates, with no
//!    protection, the nftables recipe, and mailguard (`flood.rs`; its fastest generator in
//!    `xdp_flood.rs`).
//!
//! Before anything is timed, counters prove that every run took the intended path. The
//! benchmark runs in a network and mount namespace of its own (a private bpffs), so nothing it
//! sets up outlives it.
//!
//! `MAILGUARD_BENCH_ONLY=packets` (section 1), `=new` (section 2), `=sources` (sections 1 to
//! 3), `=lists` (section 4), `=flood` (section 6) or `=flood-top` (its top setting, the XDP
//! generator of `xdp_flood.rs`) measures those sections, prints them and writes nothing: for
//! trying a change quickly.

mod flood;
mod lists;
mod measure;
mod peer;
mod plots;
mod table_size;
mod touch;
mod xdp_flood;

use std::{
    fmt::Write as _,
    net::{TcpListener, TcpStream},
    process::ExitCode,
    thread,
};

use aya::{
    Ebpf,
    maps::Array,
    programs::Xdp,
    sys::{Stats as BpfStats, enable_stats},
};
use guard_common::{
    AccountingEvent, BUDGET_ACTIVE, ClassBudget, DEFAULT_TRACKED_SOURCES, Gcra, MailClass, Reason,
    SourceBucket, SourceKey, SourceSlot, SourceState, maps as names, prefix_mask, source_bucket,
    source_buckets,
};
use guard_tests::{
    harness::{mark_verified, pin_to_one_cpu, set_connections},
    netns::{enter_private_netns, sh},
    packet::{ACK, Ext, Packet, SYN, tcp},
};
use mailguard::{
    config::Config,
    kernel::guard::Guard,
    kernel::policy::{Contents, Extra},
};
use measure::{
    CHECK_RUNS, Comparison, REPEAT, Stats, TAIL_RUNS, TRIALS, Timed, cpu_times, differences,
    ns_per_run, p99_single, ratios, rotating_single_runs, stats, trials_each,
};
use peer::XdpFilter;
use touch::BucketTouch;

/// The configuration measured: defaults, with room for a million tracked sources and
/// connections, and a SYN ceiling burst large enough that the new-source runs (every one an
/// unverified source) are all admitted, each paying the ceiling's check.
const CONFIG: &str = "[budgets]\nsyn_ceiling_burst = 1000000\ntracked_sources = 2200000\n\
                      tracked_connections = 1100000\n";
const TRACKED_SOURCES: u32 = 2_200_000;
/// `CONFIG` with the default configuration's tables, for the new-source comparison.
const DEFAULT_TABLES_CONFIG: &str = "[budgets]\nsyn_ceiling_burst = 1000000\n";
/// The default configuration's tables with a SYN ceiling that one SYN spends (a token every
/// 1000 s), for the path of a spoofed flood's SYNs once the ceiling is spent.
const CEILING_SPENT_CONFIG: &str = "[budgets]\nsyn_ceiling = 0.001\nsyn_ceiling_burst = 1\n";

/// What `CONFIG` gains for the list verdicts: MX-only on, an allowlist and a block list.
const MX_ONLY_SWITCH: &str = "mx_only = true\n";
const MX_ONLY_LISTS: &str =
    "[lists.mx_allow]\ncidrs = [\"198.18.0.0/24\"]\n[lists.block]\ncidrs = [\"198.18.9.0/24\"]\n";

/// XDP verdicts.
const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Sources in the scaling runs.
const SCALES: [u32; 3] = [1_000, 100_000, 1_000_000];
/// Different sources in the new-source runs.
const NEW_SOURCES: u32 = 20_000;
/// Trials the new-source runs are split into (each `NEW_SOURCES / NEW_TRIALS` sources).
const NEW_TRIALS: usize = 20;
/// Connections in the sock_ops run.
const CONNECTIONS: u32 = 2_000;

struct Case {
    name: &'static str,
    /// The name on the plot.
    short: &'static str,
    packet: Vec<u8>,
    reason: Reason,
    /// The product's target ratio to the floor, and the issue that set it.
    target: Option<(f64, &'static str)>,
    /// Whether the target also asks mailguard to cost less than xdp-filter on this packet.
    below_peer: bool,
}

/// One packet measured on the three programs, trials interleaved.
struct Row<'a> {
    case: &'a Case,
    mailguard: Stats,
    floor: Stats,
    peer: Stats,
    /// mailguard over the floor, trial by trial.
    ratio: Stats,
    /// xdp-filter over the floor, trial by trial.
    peer_ratio: Stats,
    /// 99th percentiles of single runs: mailguard, floor, xdp-filter.
    p99: [f64; 3],
    /// What xdp-filter did with the packet.
    peer_verdict: &'static str,
}

/// Verifies every program's path on each packet, then times them side by side.
fn measure_cases<'a>(
    guard: &Guard,
    floor: &Xdp,
    peer: &XdpFilter,
    cases: &'a [Case],
) -> Result<Vec<Row<'a>>, String> {
    let program = guard.xdp().map_err(|e| e.to_string())?;
    let mut verdicts = Vec::new();
    for c in cases {
        check_path(guard, c.name, &c.packet, c.reason, CHECK_RUNS)?;
        verdicts.push(check_peer_path(peer, c.name, &c.packet)?);
        let floor_run = floor.run(&c.packet, 1);
        if floor_run.retval != XDP_DROP {
            return Err(format!(
                "{}: the floor returned {}",
                c.name, floor_run.retval
            ));
        }
    }
    println!(
        "paths verified: every one of {CHECK_RUNS} runs per packet counted under its reason, by mailguard \
         and by xdp-filter"
    );
    let packets: Vec<&[u8]> = cases.iter().map(|c| c.packet.as_slice()).collect();
    let timed = trials_each(&[program, floor, peer], &packets);
    let mut rows = Vec::new();
    for ((c, peer_verdict), t) in cases.iter().zip(verdicts).zip(timed) {
        let row = Row {
            case: c,
            mailguard: stats(t[0].clone()),
            floor: stats(t[1].clone()),
            peer: stats(t[2].clone()),
            ratio: ratios(&t[0], &t[1]),
            peer_ratio: ratios(&t[2], &t[1]),
            p99: [
                p99_single(program, &c.packet, TAIL_RUNS),
                p99_single(floor, &c.packet, TAIL_RUNS),
                p99_single(peer, &c.packet, TAIL_RUNS),
            ],
            peer_verdict,
        };
        println!(
            "{:<64} mailguard {:>4.0} ns  floor {:>3.0} ns  xdp-filter {:>4.0} ns  ratio {:.2}x ({:.2}-{:.2})",
            c.name,
            row.mailguard.median,
            row.floor.median,
            row.peer.median,
            row.ratio.median,
            row.ratio.min,
            row.ratio.max
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Runs `packet` through xdp-filter `CHECK_RUNS` times: its own counters must show exactly
/// that many packets under the verdict the runs returned, and nothing else.
fn check_peer_path(peer: &XdpFilter, name: &str, packet: &[u8]) -> Result<&'static str, String> {
    let before = peer.action_counts()?;
    let run = peer.run(packet, CHECK_RUNS);
    let after = peer.action_counts()?;
    let (slot, verdict) = match run.retval {
        XDP_ABORTED => (0, "aborted"),
        XDP_DROP => (1, "drop"),
        XDP_PASS => (2, "pass"),
        other => return Err(format!("{name}: xdp-filter returned {other}")),
    };
    let moved: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let mut expected = vec![0; 3];
    expected[slot] = CHECK_RUNS as u64;
    if moved != expected {
        return Err(format!(
            "{name}: xdp-filter's counters (aborted, drop, pass) moved {moved:?}, expected {expected:?}"
        ));
    }
    Ok(verdict)
}

/// The mx budget's cap on concurrent connections (the example configuration's): no measured
/// source reaches it.
const CAP: u32 = 50;

/// The mx budget charges every SYN (rate state, cap check, rate) and never refuses one at
/// the rates BPF_PROG_TEST_RUN reaches: one admission per nanosecond, a second's burst.
fn charge_every_syn(guard: &mut Guard) -> Result<(), String> {
    let never_refuses = ClassBudget {
        rate: Gcra {
            interval_ns: 1,
            tolerance_ns: 1_000_000_000,
        },
        max_connections: CAP,
        flags: BUDGET_ACTIVE,
    };
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .budgets
        .set(MailClass::Mx as u32, never_refuses, 0)
        .map_err(|e| e.to_string())
}

/// mailguard loaded with `config`, charging every SYN, and its known sources: they completed
/// connections before (sock_ops marked them verified); one holds a connection open, counted as
/// sock_ops counts it; another holds one too, in a bucket with a source at its cap (so its SYN
/// reads its exact count).
fn prepared(config: &Config) -> Result<Guard, String> {
    let mut guard = loaded(config)?;
    charge_every_syn(&mut guard)?;
    let mx = |k: SourceKey| SourceKey {
        class: MailClass::Mx as u8,
        ..k
    };
    let known_v4 = mx(SourceKey::v4([198, 18, 0, 2], [255; 4], 0));
    let holding = mx(SourceKey::v4([198, 18, 0, 3], [255; 4], 0));
    let mut v6 = [0u8; 16];
    v6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    v6[15] = 2;
    let known_v6 = mx(SourceKey::v6(v6, prefix_mask::<16>(64), 0));
    let crowded = mx(SourceKey::v4([198, 18, 0, 4], [255; 4], 0));
    for k in [known_v4, holding, known_v6, crowded] {
        mark_verified(&mut guard, k)?;
    }
    let tracked = config.budgets.tracked_sources;
    set_connections(&mut guard, tracked, holding, 1)?;
    set_connections(&mut guard, tracked, crowded, 1)?;
    let neighbour = bucket_neighbour(&crowded, source_buckets(tracked))?;
    set_connections(&mut guard, tracked, neighbour, CAP)?;
    Ok(guard)
}

/// A mail SYN from a new source (the insert path), by single runs over `NEW_SOURCES` packets,
/// each from a source mailguard has not seen, on `big` (the measured configuration's tables)
/// and on `default` (the default configuration's), beside a known source's single runs, the
/// floor's and xdp-filter's on the same packets, and the memory reference's (`BucketTouch`) on
/// tables of both sizes, and on `spent` (default tables, its SYN ceiling spent before the runs,
/// so that every SYN takes a spoofed flood's path: dropped by the ceiling): one run of each per
/// packet, their order rotating, so that the machine's drift falls on all alike. Then the same
/// sources once more on
/// `big`, each tracked but not seen lately, beside the floor. Every figure is the median of
/// `NEW_TRIALS` trials, each the mean of its share of the packets.
fn new_sources(
    big: &Guard,
    default: &Guard,
    spent: &Guard,
    floor: &Xdp,
    peer: &XdpFilter,
    syn: &dyn Fn(&str, u16) -> Vec<u8>,
) -> Result<NewSources, String> {
    let big_xdp = big.xdp().map_err(|e| e.to_string())?;
    let default_xdp = default.xdp().map_err(|e| e.to_string())?;
    let spent_xdp = spent.xdp().map_err(|e| e.to_string())?;
    // One SYN, from a source outside the measured ones, spends the ceiling.
    ns_per_run(spent_xdp, &syn("198.18.200.1", 25), 1);
    let spent0 = spent.counters().map_err(|e| e.to_string())?;
    let known = syn("198.18.0.2", 25);
    // The known source is tracked before the count starts.
    ns_per_run(big_xdp, &known, 1);
    let tracked = |g: &Guard| guard_accounting(g, AccountingEvent::SourceTracked);
    let (big0, default0) = (tracked(big)?, tracked(default)?);
    let touch_big = BucketTouch::load(source_buckets(TRACKED_SOURCES))?;
    let touch_default = BucketTouch::load(source_buckets(DEFAULT_TRACKED_SOURCES))?;
    let source = |i: u32| syn(&format!("198.19.{}.{}", i / 250, 1 + i % 250), 25);
    // times[path][trial]: floor, xdp-filter, known, new (big), new (default), reference (big),
    // reference (default), ceiling spent (default).
    let programs: [(&dyn Timed, bool); 8] = [
        (floor, false),
        (peer, false),
        (big_xdp, true),
        (big_xdp, false),
        (default_xdp, false),
        (&touch_big, false),
        (&touch_default, false),
        (spent_xdp, false),
    ];
    // The packet is built once per source; `true` runs the known source's instead.
    let mut packet = (u32::MAX, Vec::new());
    let times = rotating_single_runs(programs.len(), NEW_SOURCES, NEW_TRIALS, |j, i| {
        if packet.0 != i {
            packet = (i, source(i));
        }
        let (program, known_source) = programs[j];
        ns_per_run(program, if known_source { &known } else { &packet.1 }, 1)
    });
    for (name, g, before) in [
        ("tables for a million", big, big0),
        ("default tables", default, default0),
    ] {
        let inserted = tracked(g)? - before;
        if inserted != NEW_SOURCES as u64 {
            return Err(format!(
                "new-source runs ({name}) inserted {inserted} sources, expected {NEW_SOURCES}"
            ));
        }
    }
    let dropped = spent.counters().map_err(|e| e.to_string())?.delta(&spent0);
    if dropped != [(Reason::SynCeiling, NEW_SOURCES as u64)] {
        return Err(format!(
            "ceiling-spent runs: counters moved {dropped:?}, expected syn_ceiling+{NEW_SOURCES}"
        ));
    }
    for (name, touch) in [
        ("tables for a million", &touch_big),
        ("default tables", &touch_default),
    ] {
        let touches = touch.touches()?;
        if touches != NEW_SOURCES as u64 {
            return Err(format!(
                "the memory reference ({name}) touched its table {touches} times, expected {NEW_SOURCES}"
            ));
        }
    }
    // Once more: every source is tracked now, its bucket untouched for NEW_SOURCES packets.
    let big1 = tracked(big)?;
    let second: [&dyn Timed; 2] = [big_xdp, floor];
    let mut packet = (u32::MAX, Vec::new());
    let mut again = rotating_single_runs(2, NEW_SOURCES, NEW_TRIALS, |j, i| {
        if packet.0 != i {
            packet = (i, source(i));
        }
        ns_per_run(second[j], &packet.1, 1)
    });
    let again_floor = again.pop().expect("two paths");
    let again = again.pop().expect("two paths");
    if tracked(big)? != big1 {
        return Err("the tracked sources' second runs inserted sources".into());
    }
    let path = |t: &[f64], f: &[f64]| NewPath {
        ns: stats(t.to_vec()),
        ratio: ratios(t, f),
        over_peer: ratios(t, &times[1]),
    };
    let r = NewSources {
        floor: stats(times[0].clone()),
        peer: path(&times[1], &times[0]),
        known: path(&times[2], &times[0]),
        new_big: path(&times[3], &times[0]),
        new_default: path(&times[4], &times[0]),
        touch_big: path(&times[5], &times[0]),
        touch_default: path(&times[6], &times[0]),
        spent: path(&times[7], &times[0]),
        over_touch_big: differences(&times[3], &times[5]),
        over_touch_default: differences(&times[4], &times[6]),
        again: path(&again, &again_floor),
        again_floor: stats(again_floor),
    };
    println!(
        "single runs: new source {:.0} ns (default tables {:.0} ns), memory reference {:.0} ns (default tables \
         {:.0} ns), ceiling spent {:.0} ns, known source {:.0} ns, floor {:.0} ns, xdp-filter {:.0} ns; tracked, \
         not seen lately {:.0} ns (floor {:.0} ns)",
        r.new_big.ns.median,
        r.new_default.ns.median,
        r.touch_big.ns.median,
        r.touch_default.ns.median,
        r.spent.ns.median,
        r.known.ns.median,
        r.floor.median,
        r.peer.ns.median,
        r.again.ns.median,
        r.again_floor.median
    );
    Ok(r)
}

/// An IPv6 /64 source (in 2001:db8::/32) whose key has the bucket of `key` in a table of
/// `buckets` buckets.
fn bucket_neighbour(key: &SourceKey, buckets: u32) -> Result<SourceKey, String> {
    let bucket = source_bucket(key.slot_hash(), buckets);
    (0..u32::MAX)
        .map(|i| {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
            a[4..8].copy_from_slice(&i.to_be_bytes());
            SourceKey::v6(a, prefix_mask::<16>(64), key.class)
        })
        .find(|k| source_bucket(k.slot_hash(), buckets) == bucket)
        .ok_or_else(|| "no source shares the bucket".to_string())
}

/// mailguard loaded (not attached) with `config` written into its maps.
fn loaded(config: &Config) -> Result<Guard, String> {
    let mut guard = Guard::load(config).map_err(|e| e.to_string())?;
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .write(&Contents::of(config, &Extra::new()), config)
        .map_err(|e| e.to_string())?;
    Ok(guard)
}

fn check_path(
    guard: &Guard,
    name: &str,
    packet: &[u8],
    reason: Reason,
    runs: u32,
) -> Result<(), String> {
    let before = guard.counters().map_err(|e| e.to_string())?;
    ns_per_run(guard.xdp().map_err(|e| e.to_string())?, packet, runs);
    let delta = guard.counters().map_err(|e| e.to_string())?.delta(&before);
    if delta == [(reason, runs as u64)] {
        Ok(())
    } else {
        Err(format!(
            "{name}: counters moved {delta:?}, expected {}+{runs}",
            reason.name()
        ))
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "docs/BENCHMARKS.md".to_string());
    enter_private_namespaces()?;
    pin_to_one_cpu();
    sh(&["ip", "addr", "add", "198.18.0.1/32", "dev", "lo"]);
    // An established connection, so that the reply ACK finds its socket.
    let listener = TcpListener::bind("198.18.0.1:0").map_err(|e| e.to_string())?;
    let server = listener.local_addr().map_err(|e| e.to_string())?.port();
    let client = TcpStream::connect(("198.18.0.1", server)).map_err(|e| e.to_string())?;
    let client_port = client.local_addr().map_err(|e| e.to_string())?.port();
    let _accepted = listener.accept().map_err(|e| e.to_string())?;

    let (config, _) = Config::parse(CONFIG, "bench").map_err(|e| e.to_string())?;
    let (default_config, _) =
        Config::parse(DEFAULT_TABLES_CONFIG, "bench").map_err(|e| e.to_string())?;
    let (spent_config, _) =
        Config::parse(CEILING_SPENT_CONFIG, "bench").map_err(|e| e.to_string())?;
    let (mx_config, _) =
        Config::parse(&format!("{MX_ONLY_SWITCH}{CONFIG}{MX_ONLY_LISTS}"), "bench")
            .map_err(|e| e.to_string())?;
    let mut guard = prepared(&config)?;
    let verified = guard.verified_instructions().ok().flatten();

    let mut floor_obj = Ebpf::load(guard_tests::reference::FLOOR).map_err(|e| e.to_string())?;
    let floor: &Xdp = guard_tests::reference::xdp_program(&mut floor_obj, "xdp_floor")?;
    let only = std::env::var("MAILGUARD_BENCH_ONLY").ok();
    if only.as_deref() == Some("lists") {
        lists::measure(floor)?;
        return Ok(());
    }
    if let Some(which @ ("flood" | "flood-top")) = only.as_deref() {
        unpin_cpus();
        let (points, retried) = flood::measure(which == "flood-top")?;
        print!("{}", flood::report(&points, retried, &[]));
        return Ok(());
    }
    let peer = XdpFilter::load(&config.mail_ports)?;
    println!("peer: {} (deny policy, mail ports allowed)", peer.version);

    let syn = |src: &str, port: u16| Packet::v4(src, "198.18.0.1", tcp(40000, port, SYN)).build();
    let default_cases = [
        Case {
            name: "non-mail SYN (TCP 3306, dropped)",
            short: "non-mail SYN",
            packet: syn("198.18.0.2", 3306),
            reason: Reason::TcpNotAllowed,
            target: Some((1.5, "2, 6")),
            below_peer: false,
        },
        Case {
            name: "mail SYN, class without budget (993, passed)",
            short: "mail SYN, no budget",
            packet: syn("198.18.0.2", 993),
            reason: Reason::MailNew,
            target: Some((2.0, "2")),
            below_peer: false,
        },
        Case {
            name: "mail SYN charged to a budget, known source (25)",
            short: "mail SYN charged",
            packet: syn("198.18.0.2", 25),
            reason: Reason::MailNew,
            target: Some((3.0, "6")),
            below_peer: true,
        },
        Case {
            name: "mail SYN charged, known source holding 1 connection (25)",
            short: "charged, open connection",
            packet: syn("198.18.0.3", 25),
            reason: Reason::MailNew,
            target: Some((3.0, "6")),
            below_peer: true,
        },
        Case {
            name: "mail SYN charged, known source holding 1 connection, bucket shared with a source at its cap (25)",
            short: "charged, shared bucket",
            packet: syn("198.18.0.4", 25),
            reason: Reason::MailNew,
            target: None,
            below_peer: false,
        },
        Case {
            name: "IPv6 mail SYN, hop-by-hop + destination options, charged (25)",
            short: "IPv6 + ext hdrs, charged",
            packet: Packet::v6("2001:db8::2", "2001:db8::1", tcp(40000, 25, SYN))
                .ext(Ext::HopByHop)
                .ext(Ext::DestOpts)
                .build(),
            reason: Reason::MailNew,
            target: Some((3.0, "6")),
            below_peer: true,
        },
        Case {
            name: "reply ACK (socket lookup, passed)",
            short: "reply ACK",
            packet: Packet::v4("198.18.0.1", "198.18.0.1", tcp(server, client_port, ACK)).build(),
            reason: Reason::TcpReply,
            target: None,
            below_peer: false,
        },
        Case {
            name: "ARP (passed)",
            short: "ARP",
            packet: Packet::ethertype(0x0806).build(),
            reason: Reason::NonIp,
            target: None,
            below_peer: false,
        },
    ];
    // With MX-only on (allowlist 198.18.0.0/24) and a block list (198.18.9.0/24).
    let list_cases = [
        Case {
            name: "MX-only denied SYN (25, source not in the allowlist)",
            short: "MX-only denied",
            packet: syn("198.18.7.7", 25),
            reason: Reason::MxOnlyDenied,
            target: None,
            below_peer: false,
        },
        Case {
            name: "blocked source (SYN to 25)",
            short: "blocked source",
            packet: syn("198.18.9.9", 25),
            reason: Reason::Blocked,
            target: None,
            below_peer: false,
        },
    ];
    // The new-source runs of `guard`, beside mailguards with the default tables.
    let new_sources_beside = |guard: &Guard| {
        new_sources(
            guard,
            &prepared(&default_config)?,
            &prepared(&spent_config)?,
            floor,
            &peer,
            &syn,
        )
    };
    if only.as_deref() == Some("new") {
        new_sources_beside(&guard)?;
        let sizes = table_size::measure(floor, &peer, &syn)?;
        print!("{}", table_size::report(&sizes, None));
        return Ok(());
    }
    let (steal0, total0) = cpu_times();
    let mut rows = measure_cases(&guard, floor, &peer, &default_cases)?;
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .write(&Contents::of(&mx_config, &Extra::new()), &mx_config)
        .map_err(|e| e.to_string())?;
    rows.extend(measure_cases(&guard, floor, &peer, &list_cases)?);
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .write(&Contents::of(&config, &Extra::new()), &config)
        .map_err(|e| e.to_string())?;
    charge_every_syn(&mut guard)?;

    if only.as_deref() == Some("packets") {
        return Ok(());
    }

    let new = new_sources_beside(&guard)?;
    let sizes = table_size::measure(floor, &peer, &syn)?;

    // Scaling: the same known-source SYN with more and more sources tracked, a mailguard per
    // scale, all timed in the same trials with the floor (the machine's drift between scales
    // cannot pass for a cost that grows).
    let known = &default_cases[2].packet;
    let mut scaled = Vec::new();
    for n in SCALES {
        let mut g = prepared(&config)?;
        let placed = fill_sources(&mut g, 0, n)?;
        check_path(
            &g,
            "known source at scale",
            known,
            Reason::MailNew,
            CHECK_RUNS,
        )?;
        scaled.push((n, placed, g));
    }
    let xdps = scaled
        .iter()
        .map(|(_, _, g)| g.xdp().map_err(|e| e.to_string()))
        .collect::<Result<Vec<&Xdp>, String>>()?;
    let mut scaling: Vec<(u32, u32, Comparison)> = Vec::new();
    for ((n, placed, _), m) in scaled.iter().zip(measure::compare_all(&xdps, floor, known)) {
        println!(
            "{n:>9} sources added ({placed} placed): {:.0} ns, ratio {:.2}x",
            m.mailguard.median, m.ratio.median
        );
        scaling.push((*n, *placed, m));
    }
    drop(xdps);
    drop(scaled);
    if only.as_deref() == Some("sources") {
        return Ok(());
    }
    // Flatness on the ratios to the floor timed beside each trial: the machine's drift between
    // scales (a shared VM speeds up and slows down over minutes) cancels out.
    let ratios: Vec<f64> = scaling.iter().map(|(_, _, m)| m.ratio.median).collect();
    let spread = measure::spread(&ratios);
    let list_rows = lists::measure(floor)?;
    let (steal1, total1) = cpu_times();
    let steal = 100.0 * (steal1 - steal0) as f64 / (total1 - total0).max(1) as f64;

    let sockops = sockops_cost(&mut guard)?;
    println!(
        "sock_ops: {:.0} ns per run, {:.1} runs per connection, {:.0} ns per connection",
        sockops.ns_per_run, sockops.runs_per_connection, sockops.ns_per_connection
    );

    // On the wire, on every CPU: the processes the lab starts inherit this affinity.
    unpin_cpus();
    // A failed flood measurement still leaves the rest of the report, saying so; the bench then
    // fails.
    let flood = flood::measure(false);

    let dir = std::path::Path::new(&out)
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let bars: Vec<plots::BarGroup> = rows
        .iter()
        .map(|r| {
            let s = |s: &Stats| (s.median, s.min, s.max);
            (
                r.case.short.to_string(),
                vec![s(&r.mailguard), s(&r.peer), s(&r.floor)],
            )
        })
        .collect();
    plots::bars(
        &dir.join("packets.png"),
        "Per-packet cost, BPF_PROG_TEST_RUN, identical packets",
        "ns per packet (median, min-max)",
        &["mailguard", "xdp-filter", "floor (XDP_DROP only)"],
        &bars,
    )?;
    let (_, sizes_plot) = table_size::plot(&sizes, &dir)?;
    let flood_section = match &flood {
        Ok((points, retried)) => {
            let flood_plots: Vec<(&str, String)> = flood::plot(points, &dir)?
                .into_iter()
                .map(|(alt, file)| (alt, format!("bench/{file}")))
                .collect();
            flood::report(points, *retried, &flood_plots)
        }
        Err(e) => format!(
            "## On the wire: legitimate mail under a SYN flood\n\n**Not measured in this run**: {e}\n"
        ),
    };

    let md = report(Report {
        verified,
        steal,
        rows: &rows,
        new,
        peer_version: &peer.version,
        peer_ports: &peer.ports,
        scaling: &scaling,
        spread,
        sockops: &sockops,
        sizes: table_size::report(&sizes, Some(&format!("bench/{sizes_plot}"))),
    }) + &lists::report(&list_rows)
        + &flood_section;
    std::fs::write(&out, md).map_err(|e| format!("cannot write {out}: {e}"))?;
    println!("wrote {out}");
    flood.map(|_| ())
}

/// A network namespace and a mount namespace of the benchmark's own, with a fresh bpffs on
/// /sys/fs/bpf: the veth, xdp-filter's attachment and its pins vanish with the process, and
/// nothing of the host's is touched.
fn enter_private_namespaces() -> Result<(), String> {
    enter_private_netns();
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: called before any thread starts; the mounts change only this new namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(os("unshare(CLONE_NEWNS)"));
        }
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(os("making / private in the benchmark's mount namespace"));
        }
        if libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        ) != 0
        {
            return Err(os("mounting a private bpffs on /sys/fs/bpf"));
        }
    }
    Ok(())
}

/// Lets this process (and what it starts from now on) run on every online CPU again.
fn unpin_cpus() {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    run_on(0..cpus);
}

/// Lets the calling thread (and what it starts from now on) run on `cpus` only.
fn run_on(cpus: impl IntoIterator<Item = usize>) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only read
    // and write the set passed; pid 0 is the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn guard_accounting(guard: &Guard, event: AccountingEvent) -> Result<u64, String> {
    let map = guard.map(names::ACCOUNTING).ok_or("no accounting map")?;
    let array: aya::maps::PerCpuArray<_, u64> =
        aya::maps::PerCpuArray::try_from(map).map_err(|e| e.to_string())?;
    Ok(array
        .get(&(event as u32), 0)
        .map_err(|e| e.to_string())?
        .iter()
        .sum())
}

/// Adds tracked sources (rate state and one open connection each) up to `to`, IPv6 /64s that no
/// packet of the bench uses, each in the first free slot of its bucket as XDP places them; a
/// source whose bucket is full is left out. Returns how many were placed.
fn fill_sources(guard: &mut Guard, from: u32, to: u32) -> Result<u32, String> {
    let key = |i: u32| {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        a[4..8].copy_from_slice(&i.to_be_bytes());
        SourceKey::v6(a, prefix_mask::<16>(64), MailClass::Mx as u8)
    };
    let buckets = source_buckets(TRACKED_SOURCES);
    let mut placed = 0;
    {
        let map = guard.map_mut(names::SOURCES).ok_or("no sources map")?;
        let mut sources: Array<_, SourceBucket> =
            Array::try_from(map).map_err(|e| e.to_string())?;
        for i in from..to {
            let k = key(i);
            let b = source_bucket(k.slot_hash(), buckets);
            let mut bucket = sources.get(&b, 0).map_err(|e| e.to_string())?;
            if let Some(slot) = bucket.slots.iter_mut().find(|s| s.key.family == 0) {
                *slot = SourceSlot {
                    key: k,
                    flags: 0,
                    state: SourceState::default(),
                };
                sources
                    .set(b, bucket, 0)
                    .map_err(|e| format!("source {i}: {e}"))?;
                placed += 1;
            }
        }
    }
    for i in from..to {
        set_connections(guard, TRACKED_SOURCES, key(i), 1)?;
    }
    Ok(placed)
}

struct SockopsCost {
    ns_per_run: f64,
    runs_per_connection: f64,
    ns_per_connection: f64,
}

/// Real connections to a mail port in this namespace, with sock_ops attached and the kernel's
/// BPF run-time statistics on. Other sockets on the host run the program too (it returns at
/// once for them): they are in the per-run figure, not in the per-connection one beyond the
/// runs they add.
fn sockops_cost(guard: &mut Guard) -> Result<SockopsCost, String> {
    let _stats = enable_stats(BpfStats::RunTime).map_err(|e| e.to_string())?;
    guard.attach_sockops().map_err(|e| e.to_string())?;
    let listener = TcpListener::bind("198.18.0.1:25").map_err(|e| e.to_string())?;
    let acceptor = thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            if let Ok((s, _)) = listener.accept() {
                drop(s);
            }
        }
    });
    let (time0, runs0) = guard
        .run_stats(names::SOCKOPS_PROGRAM)
        .map_err(|e| e.to_string())?;
    for _ in 0..CONNECTIONS {
        let c = TcpStream::connect("198.18.0.1:25").map_err(|e| e.to_string())?;
        drop(c);
    }
    acceptor.join().map_err(|_| "acceptor thread")?;
    // Let the last closes run their callbacks.
    thread::sleep(std::time::Duration::from_millis(200));
    let (time1, runs1) = guard
        .run_stats(names::SOCKOPS_PROGRAM)
        .map_err(|e| e.to_string())?;
    let runs = (runs1 - runs0) as f64;
    let ns = (time1 - time0).as_nanos() as f64;
    if runs < CONNECTIONS as f64 {
        return Err(format!(
            "sock_ops ran {runs} times for {CONNECTIONS} connections"
        ));
    }
    Ok(SockopsCost {
        ns_per_run: ns / runs,
        runs_per_connection: runs / CONNECTIONS as f64,
        ns_per_connection: ns / CONNECTIONS as f64,
    })
}

/// One path of the new-source comparison: its single-run times and their ratios, trial by
/// trial, to the floor and to xdp-filter.
struct NewPath {
    ns: Stats,
    ratio: Stats,
    over_peer: Stats,
}

/// The new-source comparison (single runs, medians of `NEW_TRIALS` trials).
struct NewSources {
    floor: Stats,
    peer: NewPath,
    known: NewPath,
    /// A new source, tables sized as `CONFIG` says (for a million sources).
    new_big: NewPath,
    /// A new source, the default configuration's tables.
    new_default: NewPath,
    /// The memory reference (`BucketTouch`) on the same packets, a table as `new_big`'s and one
    /// as `new_default`'s.
    touch_big: NewPath,
    touch_default: NewPath,
    /// A new source when the SYN ceiling is spent (a spoofed flood's SYN, dropped), the default
    /// configuration's tables.
    spent: NewPath,
    /// A new source's time over the reference's, trial by trial (ns), per table size.
    over_touch_big: Stats,
    over_touch_default: Stats,
    /// The new sources once more (tracked, not seen lately), tables as `new_big`, with ratios
    /// to the floor's runs beside them (`again_floor`).
    again: NewPath,
    again_floor: Stats,
}

struct Report<'a> {
    verified: Option<u32>,
    steal: f64,
    rows: &'a [Row<'a>],
    new: NewSources,
    peer_version: &'a str,
    peer_ports: &'a str,
    scaling: &'a [(u32, u32, Comparison)],
    spread: f64,
    sockops: &'a SockopsCost,
    /// The new-source section by table size (`table_size::report`).
    sizes: String,
}

fn spread_ns(s: &Stats) -> String {
    format!("{:.0} ({:.0}-{:.0})", s.median, s.min, s.max)
}

/// Whether a new-source figure meets issue 6's mail SYN target, said plainly.
fn new_verdict(p: &NewPath) -> String {
    let ratio = p.ratio.median;
    let within = ratio <= 3.0;
    let below = p.over_peer.median < 1.0;
    let peer = format!("{:.2}x xdp-filter", p.over_peer.median);
    match (within, below) {
        (true, true) => format!("{ratio:.2}x, below xdp-filter ({peer}): met"),
        (true, false) => format!("{ratio:.2}x but not below xdp-filter ({peer}): **not met**"),
        (false, true) => format!("{ratio:.2}x (> 3x), below xdp-filter ({peer}): **not met**"),
        (false, false) => format!("{ratio:.2}x (> 3x), above xdp-filter ({peer}): **not met**"),
    }
}

/// What the memory reference says about the new-source target: whether the memory access
/// alone already misses it, table by table.
fn memory_bound(n: &NewSources) -> String {
    let misses = |t: &NewPath| t.ratio.median > 3.0 || t.over_peer.median >= 1.0;
    let tables: Vec<String> = [
        ("for a million sources", &n.touch_big),
        ("of the default size", &n.touch_default),
    ]
    .iter()
    .filter(|(_, t)| misses(t))
    .map(|(name, t)| {
        format!(
            "on a table {name} the reference alone is at {:.2}x the floor and {:.2}x xdp-filter",
            t.ratio.median, t.over_peer.median
        )
    })
    .collect();
    if tables.is_empty() {
        String::new()
    } else {
        format!(
            " The memory access by itself misses the target: {}.",
            tables.join("; ")
        )
    }
}

fn report(r: Report) -> String {
    let mut md = String::new();
    let uname = String::from_utf8_lossy(&sh(&["uname", "-srm"]).stdout)
        .trim()
        .to_string();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    // Online CPUs of the machine (the benchmark itself is pinned to one).
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let date = String::from_utf8_lossy(&sh(&["date", "-u", "+%Y-%m-%d %H:%M UTC"]).stdout)
        .trim()
        .to_string();
    let _ = writeln!(md, "# mailguard benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench` on {date}. Re-run it to refresh this file.\n"
    );
    let _ = writeln!(
        md,
        "## Machine\n\n- kernel: {uname}\n- CPU: {cpu} ({cpus} CPUs)\n- hypervisor steal during the timed trials: \
         {:.0}% of CPU time. A virtual machine with shared CPUs: single trials spread widely (see min-max), which is \
         why every figure is a median of alternating trials.\n",
        r.steal
    );
    let _ = writeln!(
        md,
        "## Method\n\nBPF_PROG_TEST_RUN on packets built by the test-support packet builder, the benchmark (a release \
         build, as is the `mailguard` daemon of the flood runs) pinned to one CPU, in a network and mount namespace of its own. Three programs run the identical packets: \
         **mailguard**; the **floor**, an XDP program that only returns `XDP_DROP`, built with the same toolchain \
         (tests/reference-ebpf's `xdp_floor`); and **xdp-filter** ({}), the closest XDP peer, loaded by its own tool with the \
         deny policy (a packet passes only when a rule matches) and the mail ports {} allowed, then opened by \
         program id. mailguard runs with the default configuration (the SYN ceiling on), except that the mx \
         budget is set to charge every SYN (rate state, connection count, rate check) without ever refusing one \
         at these rates, the ceiling's burst is raised so that the new-source runs are all admitted (each still \
         pays the ceiling's check), and the tables are sized for a million sources. The known sources \
         (198.18.0.2, 198.18.0.3, 198.18.0.4, 2001:db8::2) are marked as having completed a connection, as \
         sock_ops marks a sender; 198.18.0.3 and 198.18.0.4 hold one open connection each, counted as sock_ops \
         counts it, under a cap of {CAP}. XDP reads the connection count of a source's bucket in the rate table, \
         the sum of the counts of every source of the bucket: below the cap it proves the source below it, so \
         198.18.0.3's SYN reads no exact count; 198.18.0.4's bucket is shared with a source holding {CAP} \
         connections, so its SYN reads its exact count (a hash-map lookup), as a source near its cap does. The MX-only and block rows run with \
         MX-only on (allowlist 198.18.0.0/24) and a block list (198.18.9.0/24).\n\n\
         Before timing, each packet is run {CHECK_RUNS} times through mailguard and through xdp-filter: \
         mailguard's counters must show exactly {CHECK_RUNS} packets under the intended reason, xdp-filter's own \
         per-action counters exactly {CHECK_RUNS} under the verdict it returned (shown in the table; xdp-filter \
         keeps no state, so it passes the reply ACK only because of the port it comes from, and has no notion \
         of MX-only), and the floor must drop. Then {TRIALS} trials each time every packet (those of the default \
         configuration, then those of the MX-only one) on the three programs, their order rotating, each \
         timing one BPF_PROG_TEST_RUN call of {REPEAT} runs, so that a noisy spell of the machine falls on a few \
         trials of every packet rather than on all the trials of one; the kernel reports the mean time per run in whole \
         nanoseconds. Figures are medians over trials with min-max; a ratio is the median over trials of each \
         program's trial divided by the floor trial run beside it, so that drift in the machine's speed cancels \
         out. The p99 column is the 99th percentile of {TAIL_RUNS} single runs (repeat 1) of the packet, \
         kernel-measured: every single run includes the test loop's own timer reads, the floor's too, so compare \
         p99s with the floor's. The verifier processed {} instructions for mailguard_xdp.\n",
        r.peer_version,
        r.peer_ports,
        r.verified.map_or("?".to_string(), |n| n.to_string())
    );
    let _ = writeln!(
        md,
        "## Per-packet cost\n\n![per-packet cost of mailguard, xdp-filter and the floor](bench/packets.png)\n"
    );
    let _ = writeln!(
        md,
        "| packet | mailguard ns (min-max) | p99 | floor ns | p99 | xdp-filter ns (min-max) | p99 | xdp-filter verdict | \
         mailguard / floor (min-max) | xdp-filter / floor | target |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for r in r.rows {
        let c = r.case;
        let mut target = match c.target {
            Some((t, issue)) if r.ratio.median <= t => format!("met (<= {t}x, issue {issue})"),
            Some((t, issue)) => format!("**not met** (> {t}x, issue {issue})"),
            None => "-".to_string(),
        };
        if c.below_peer {
            target += if r.mailguard.median < r.peer.median {
                "; below xdp-filter: met"
            } else {
                "; below xdp-filter: **not met**"
            };
        }
        let _ = writeln!(
            md,
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} | {:.0} | {:.0} | {:.0} ({:.0}-{:.0}) | {:.0} | {} | {:.2}x ({:.2}-{:.2}) | {:.2}x | {target} |",
            c.name,
            r.mailguard.median,
            r.mailguard.min,
            r.mailguard.max,
            r.p99[0],
            r.floor.median,
            r.p99[1],
            r.peer.median,
            r.peer.min,
            r.peer.max,
            r.p99[2],
            r.peer_verdict,
            r.ratio.median,
            r.ratio.min,
            r.ratio.max,
            r.peer_ratio.median,
        );
    }
    let _ = writeln!(
        md,
        "\nThe reply ACK pays for a kernel socket lookup (`bpf_skc_lookup_tcp`) and has no target.\n\n\
         ## New sources\n\nA repeated packet has one source, so the path that creates a source's rate state \
         is measured by single runs (repeat 1) over {NEW_SOURCES} SYNs to port 25, each from a different source \
         (counters prove {NEW_SOURCES} sources were inserted into each mailguard), on the mailguard above (tables \
         for a million sources, {TRACKED_SOURCES} rate slots: 140 MB) and on one with the default configuration's \
         tables ({DEFAULT_TRACKED_SOURCES} rate slots, 4 MB; same budget), beside single runs of the known source \
         and of the floor and xdp-filter on the same packets: per packet one run of each, their order rotating. \
         The packets are split into {NEW_TRIALS} trials; each figure is the median of the trials' means, with \
         the smallest and largest (ratios: trial by trial, to the floor's runs of the same trial). Single runs \
         include the test loop's own timer reads, the floor's as much as the others'. A new source reads memory \
         no other packet touched lately (its bucket in the rate table: two cache lines holding both its slots and \
         the bucket's connection count), which a stateless filter does not have; the SYN ceiling's token is \
         spent without a look-up of the verified sources while the ceiling has tokens. To show what that memory \
         costs by itself, the same rotation runs a **memory reference** (tests/reference-ebpf's `xdp_bucket_touch`): the \
         floor plus one load in each cache line of the bucket mailguard uses for the packet's source and one \
         store, in a table of its own laid out and sized as mailguard's (one per table size; its counts prove \
         every run touched its table), and nothing else: no program that keeps state per source in a table of \
         that size can cost less for a new source. The path of a spoofed flood's SYNs once the SYN ceiling is \
         spent runs in the same rotation, on a third mailguard with the default tables and a ceiling the one \
         SYN sent before the runs spends ({CEILING_SPENT_CONFIG:?}; counters prove every run was dropped by the \
         ceiling): its bucket, then a look-up in the verified sources, which misses. Last, what a returning sender costs whose state has gone cold: \
         the {NEW_SOURCES} sources once more to the mailguard with tables for a million, each now tracked but not \
         seen for {NEW_SOURCES} packets (counters prove none was inserted again), one run each beside one of the \
         floor.\n\n\
         | path | ns per run (min-max) | ratio to floor (min-max) |\n|---|---:|---:|\n\
         | floor | {} | 1.00x |",
        spread_ns(&r.new.floor)
    );
    let rows: [(&str, &NewPath); 8] = [
        ("xdp-filter (same packets)", &r.new.peer),
        (
            "memory reference: the bucket alone, table for a million sources",
            &r.new.touch_big,
        ),
        (
            "memory reference: the bucket alone, default table",
            &r.new.touch_default,
        ),
        ("mail SYN, known source", &r.new.known),
        (
            "mail SYN, new source (insert), tables for a million sources",
            &r.new.new_big,
        ),
        (
            "mail SYN, new source (insert), default tables",
            &r.new.new_default,
        ),
        (
            "mail SYN, new source, SYN ceiling spent (a spoofed flood's SYN: dropped), default tables",
            &r.new.spent,
        ),
        (
            "mail SYN, tracked source not seen lately, tables for a million",
            &r.new.again,
        ),
    ];
    for (name, p) in rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.2}x ({:.2}-{:.2}) |",
            spread_ns(&p.ns),
            p.ratio.median,
            p.ratio.min,
            p.ratio.max
        );
    }
    let _ = writeln!(
        md,
        "\nThe floor beside the second runs: {}. A new source over the memory reference on a table of the same \
         size, trial by trial (the rest of mailguard's path: the headers, the port's rule, the key compares, the \
         slot's claim, the ceiling's token, the counters): {} ns (tables for a million), {} ns (default tables).\n\n\
         Target (issue 6, mail SYN at most 3x the floor and below xdp-filter), new source: tables for a million \
         {}; default tables {}.{}\n",
        spread_ns(&r.new.again_floor),
        spread_ns(&r.new.over_touch_big),
        spread_ns(&r.new.over_touch_default),
        new_verdict(&r.new.new_big),
        new_verdict(&r.new.new_default),
        memory_bound(&r.new)
    );
    md += &r.sizes;
    let _ = writeln!(
        md,
        "\n## Tracked sources\n\nThe known-source SYN, each scale on a mailguard of its own, the three timed in the same \
         trials rotating with the floor, with this many other sources (IPv6 /64s) added to the rate \
         table ({TRACKED_SOURCES} slots, two-way set-associative: each source placed in the first free slot of its \
         bucket, as XDP places them; a source whose bucket is full is left out) and holding one open connection \
         each in the connection-count table and its bucket's count:\n\n\
         | sources added | placed in the rate table | mailguard ns (min-max) | ratio to floor |\n|---:|---:|---:|---:|"
    );
    for (n, placed, m) in r.scaling {
        let _ = writeln!(
            md,
            "| {n} | {placed} | {:.0} ({:.0}-{:.0}) | {:.2}x |",
            m.mailguard.median, m.mailguard.min, m.mailguard.max, m.ratio.median
        );
    }
    let _ = writeln!(
        md,
        "\nLargest ratio to the floor over smallest (ratios, not raw ns: the floor is timed beside every trial, so \
         the machine's drift between scales cancels out): {:.2} ({} the 10% flatness target).\n",
        r.spread,
        if r.spread <= 1.10 {
            "within"
        } else {
            "**outside**"
        }
    );
    let _ = writeln!(
        md,
        "## sock_ops per connection\n\n{CONNECTIONS} connections to port 25 over loopback (connect, accept, close \
         on both sides) with the sock_ops program attached to the cgroup v2 root and the kernel's BPF run-time \
         statistics on: {:.0} ns per run, {:.1} runs per connection (establishment, state changes, close, and \
         whatever else on the host ran in that time), {:.0} ns of sock_ops per connection.\n",
        r.sockops.ns_per_run, r.sockops.runs_per_connection, r.sockops.ns_per_connection
    );
    md
}
