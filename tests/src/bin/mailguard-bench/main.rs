//! `cargo xtask bench`: what mailguard costs and what it protects, measured on this machine,
//! written to the path given as the first argument (docs/BENCHMARKS.md), with PNG plots in
//! `bench/` beside it.
//!
//! 1. Per-packet cost under BPF_PROG_TEST_RUN of mailguard, the floor (an XDP program that only
//!    returns XDP_DROP, same toolchain) and xdp-filter (the closest XDP peer, `peer.rs`), on
//!    identical packets, trials rotating (`packets.rs`, timed by `measure.rs`).
//! 2. A mail SYN from a new source (the insert path), by single runs over many sources
//!    (`new_sources.rs`, beside the memory reference of `touch.rs`), and against the size of
//!    the rate table (`table_size.rs`).
//! 3. The cost of a budget-charged SYN with 1 thousand to 1 million tracked sources
//!    (`new_sources.rs` fills the table).
//! 4. The lists: loading and swapping up to a million prefixes, and the lookups' per-packet cost
//!    at every size (`lists.rs`).
//! 5. The cost sock_ops adds per connection, from the kernel's run-time statistics
//!    (`sockops.rs`).
//! 6. On the wire: legitimate mail under a random-source SYN flood at several rates, with no
//!    protection, the nftables recipe, and mailguard with and without SYN cookies, and at the
//!    top rate xdp-filter too (`flood/`; its fastest generator in `lab::xdp_flood`).
//!
//! 7. Bans from the mail logs beside fail2ban: event to drop, bans a second, CPU, restoring
//!    100,000 bans, parsing (`bans.rs`).
//! 8. mailguard as a CrowdSec bouncer beside crowdsec-firewall-bouncer (nftables): decision to
//!    drop, applying 100,000 decisions, CPU per dropped frame on the wire (`crowdsec.rs`,
//!    `crowdsec_wire.rs`).
//! 9. A flood SYN answered with a SYN cookie, beside xdp-filter, at two rate table sizes
//!    (`cookies.rs`).
//!
//! `report.rs` writes the document, `plots.rs` its plots. Before anything is timed, counters prove that every run took the intended path. The
//! benchmark runs in a network and mount namespace of its own (a private bpffs,
//! `isolation.rs`), so nothing it sets up outlives it.
//!
//! `MAILGUARD_BENCH_BASELINE=<object>` adds another build of guard-ebpf's object to section
//! 1's trials and prints both builds side by side: a change's per-packet cost, before and
//! after, in one run (`cargo xtask bench-before REV` builds REV's object and runs this).
//!
//! `MAILGUARD_BENCH_ONLY=packets` (section 1), `=new` (section 2), `=sources` (sections 1 to
//! 3), `=lists` (section 4), `=flood` (section 6) or `=flood-top` (its top setting, the XDP
//! generator of `lab::xdp_flood`) measures those sections, prints them and writes nothing: for
//! trying a change quickly. `=bans` (section 7), `=crowdsec` (section 8) and `=cookies` (section
//! 9, a flood SYN answered with a SYN cookie) measure that section and replace it in the
//! document, leaving the rest.

mod bans;
mod cookies;
mod crowdsec;
mod crowdsec_wire;
mod flood;
mod isolation;
mod lists;
mod measure;
mod new_sources;
mod packets;
mod peer;
mod plots;
mod report;
mod sockops;
mod table_size;
mod touch;

use std::{
    net::{TcpListener, TcpStream},
    process::ExitCode,
};

use aya::{Ebpf, programs::Xdp};
use guard_common::Reason;
use guard_tests::{
    harness::pin_to_one_cpu,
    netns::sh,
    packet::{ACK, Ext, Packet, SYN, tcp},
};
use isolation::*;
use mailguard::{
    config::Config,
    kernel::guard::Guard,
    kernel::policy::{Contents, Extra},
};
use measure::{CHECK_RUNS, Comparison, Stats, cpu_times};
use new_sources::*;
use packets::*;
use peer::XdpFilter;
use report::*;
use sockops::*;

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
const CEILING_SPENT_CONFIG: &str =
    "[budgets]\nsyn_ceiling = 0.001\nsyn_ceiling_burst = 1\nsyn_cookies = \"off\"\n";

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

/// Writes `config` into the maps of `guard`, as the daemon writes a new configuration.
fn write_config(guard: &mut Guard, config: &Config) -> Result<(), String> {
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .write(&Contents::of(config, &Extra::new()), config)
        .map_err(|e| e.to_string())
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
    // Another build's object, measured beside this one in the per-packet trials.
    let baseline_object = match std::env::var_os("MAILGUARD_BENCH_BASELINE") {
        Some(path) => Some(
            std::fs::read(&path)
                .map_err(|e| format!("MAILGUARD_BENCH_BASELINE {}: {e}", path.to_string_lossy()))?,
        ),
        None => None,
    };
    let mut baseline = baseline_object
        .as_deref()
        .map(|o| prepared_from(Some(o), &config))
        .transpose()?;

    let mut floor_obj = Ebpf::load(guard_tests::reference::FLOOR).map_err(|e| e.to_string())?;
    let floor: &Xdp = guard_tests::reference::xdp_program(&mut floor_obj, "xdp_floor")?;
    let only = std::env::var("MAILGUARD_BENCH_ONLY").ok();
    if only.as_deref() == Some("lists") {
        lists::measure(floor)?;
        return Ok(());
    }
    if only.as_deref() == Some("bans") {
        unpin_cpus();
        let results = bans::measure()?;
        let section = bans::report(&results);
        print!("{section}");
        // This section alone: it replaces its own part of the document, leaving the rest.
        bans::splice(std::path::Path::new(&out), &section)?;
        println!("updated the bans section of {out}");
        return Ok(());
    }
    if only.as_deref() == Some("crowdsec") {
        unpin_cpus();
        let results = crowdsec::measure()?;
        let section = crowdsec::report(&results);
        print!("{section}");
        crowdsec::splice(std::path::Path::new(&out), &section)?;
        println!("updated the CrowdSec section of {out}");
        return Ok(());
    }
    if only.as_deref() == Some("cookies") {
        let results = cookies::measure(floor)?;
        let section = cookies::report(&results);
        print!("{section}");
        cookies::splice(std::path::Path::new(&out), &section)?;
        println!("updated the SYN cookie section of {out}");
        return Ok(());
    }
    if let Some(which @ ("flood" | "flood-top")) = only.as_deref() {
        unpin_cpus();
        let (points, retried) = flood::measure(which == "flood-top")?;
        print!("{}", flood::report(&points, retried, &[]));
        let section = flood::cookies_at_top(&points);
        print!("{section}");
        flood::splice_cookies_at_top(std::path::Path::new(&out), &section)?;
        println!("updated the section \"SYN cookies under the top flood\" of {out}");
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
    let mut rows = measure_cases(&guard, baseline.as_ref(), floor, &peer, &default_cases)?;
    for g in std::iter::once(&mut guard).chain(baseline.as_mut()) {
        write_config(g, &mx_config)?;
    }
    rows.extend(measure_cases(
        &guard,
        baseline.as_ref(),
        floor,
        &peer,
        &list_cases,
    )?);
    for g in std::iter::once(&mut guard).chain(baseline.as_mut()) {
        write_config(g, &config)?;
        charge_every_syn(g)?;
    }
    if let Some(table) = baseline_table(&rows) {
        println!("\nthe baseline build beside this one, in the same trials:\n{table}");
    }

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

    // A flood SYN answered with a cookie, single runs, still on one CPU.
    let cookies = cookies::measure(floor);

    // On the wire, on every CPU: the processes the lab starts inherit this affinity.
    unpin_cpus();
    // A failed flood measurement still leaves the rest of the report, saying so; the bench then
    // fails.
    let flood = flood::measure(false);
    let bans = bans::measure();
    let crowdsec = crowdsec::measure();

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
            flood::report(points, *retried, &flood_plots) + &flood::cookies_at_top(points)
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
        + &flood_section
        + &match &bans {
            Ok(results) => bans::report(results),
            Err(e) => format!(
                "\n## Bans from the mail logs, beside fail2ban\n\n**Not measured in this run**: {e}\n"
            ),
        }
        + &match &crowdsec {
            Ok(results) => crowdsec::report(results),
            Err(e) => format!(
                "\n## CrowdSec: mailguard as a bouncer, beside crowdsec-firewall-bouncer\n\n**Not measured in this run**: {e}\n"
            ),
        }
        + &match &cookies {
            Ok(results) => cookies::report(results),
            Err(e) => format!(
                "\n## A flood SYN answered with a SYN cookie\n\n**Not measured in this run**: {e}\n"
            ),
        };
    std::fs::write(&out, md).map_err(|e| format!("cannot write {out}: {e}"))?;
    println!("wrote {out}");
    flood.map(|_| ())?;
    bans.map(|_| ())?;
    crowdsec.map(|_| ())?;
    cookies.map(|_| ())
}
