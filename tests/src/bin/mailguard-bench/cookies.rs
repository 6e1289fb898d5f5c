//! Section 9: a flood SYN answered with a SYN cookie. A SYN without options (what flood tools
//! send) to port 25 from a source never seen, answered in XDP with the kernel's own cookie
//! (`syn_cookies = "always"`, a listener on 25, its port marked, and `tcp_syncookies = 2` in the
//! benchmark's namespace), beside xdp-filter and the floor on the same packet; on kernels with
//! cookies from the SYN alone (Linux 6.0) also the way older kernels make them (from the
//! listener a socket lookup finds). In single runs (repeat 1):
//! the answer rewrites the packet into a SYN-ACK, and BPF_PROG_TEST_RUN's repeat would run the
//! next runs on that SYN-ACK; a single run starts from the SYN every time (and includes the
//! test loop's own timer reads, as the floor's and xdp-filter's single runs do). With the rate
//! table sized for 65,536 and for 2,097,152 sources, both in the same rotating trials: the
//! answer reads no bucket of it.

use std::fmt::Write as _;

use aya::programs::Xdp;
use guard_common::{FEATURE_RAW_SYN_COOKIE, Reason};
use guard_tests::{
    packet::{Packet, SYN, tcp},
    reference,
};
use mailguard::{
    config::Config,
    kernel::{
        guard::Guard,
        policy::{Contents, Extra},
    },
};

use crate::{
    measure::{Stats, TRIALS, Timed, rotating_single_runs, stats},
    packets::loaded,
    peer::XdpFilter,
};

/// Single runs per program.
const RUNS: u32 = 42_000;
/// The rate table's sizes.
const SIZES: [u32; 2] = [65_536, 2_097_152];
const XDP_TX: u32 = 3;
const XDP_DROP: u32 = 1;

pub struct Row {
    pub tracked: u32,
    /// The cookie the way this kernel makes it (from the SYN alone where it can).
    pub mailguard: Stats,
    /// The same SYN to a mail port without a listener (587, never marked): everything the
    /// answer costs but the cookie and the rewrite (XDP_DROP, counted
    /// `syn_cookie_unavailable`).
    pub no_listener: Stats,
    /// With cookies from the SYN alone: the cookie made the older way, from the listener.
    pub from_listener: Option<Stats>,
    /// With cookies from the SYN alone: the floor plus the kernel's cookie for the packet and
    /// nothing else (`xdp_cookie_only`), the least any answer with the kernel's cookie costs.
    pub cookie_only: Option<Stats>,
    pub floor: Stats,
    pub peer: Stats,
}

pub struct Results {
    pub rows: Vec<Row>,
    pub peer_version: String,
    /// Whether this kernel makes cookies from the SYN alone.
    pub from_the_syn: bool,
}

pub fn measure(floor: &Xdp) -> Result<Results, String> {
    let mut cookie_obj = aya::Ebpf::load(reference::COOKIE_ONLY).map_err(|e| e.to_string())?;
    std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")
        .map_err(|e| format!("net.ipv4.tcp_syncookies: {e}"))?;
    let _listener =
        std::net::TcpListener::bind("[::]:25").map_err(|e| format!("a listener on 25: {e}"))?;
    let peer = XdpFilter::load(&[25])?;
    let from_the_syn = mailguard::kernel::cookies::from_the_syn();
    // The kernel's cookie alone; before Linux 6.0 there is no helper that makes it from the
    // packet, and the column stays empty.
    let cookie_only: Option<&Xdp> = if from_the_syn {
        let p = reference::xdp_program(&mut cookie_obj, "xdp_cookie_only")?;
        let r = p.run(&syn_packet(), 1);
        if r.retval != XDP_DROP {
            return Err(format!(
                "xdp_cookie_only returned {} for the SYN ({XDP_DROP}: a cookie made, expected)",
                r.retval
            ));
        }
        Some(p)
    } else {
        None
    };
    let syn = syn_packet();
    let unanswerable = Packet::v4("198.19.7.7", "198.18.0.1", tcp(40000, 587, SYN)).build();
    // Each table size's mailguard (and, with cookies from the SYN alone, the older way's).
    let mut setups: Vec<(u32, Guard, Option<Guard>)> = Vec::new();
    for tracked in SIZES {
        let text = format!(
            "mail_ports = [25, 587]\n[budgets]\nsyn_ceiling = 0\ntracked_sources = {tracked}\nsyn_cookies = \"always\"\n"
        );
        let (config, _) = Config::parse(&text, "bench").map_err(|e| e.to_string())?;
        let mut guard = loaded(&config)?;
        // Port 25 marked for the rest of the run, as the daemon marks it under a flood.
        guard
            .set_cookie_ports(&[(25, u64::MAX)])
            .map_err(|e| e.to_string())?;
        let older = if from_the_syn {
            let mut g =
                Guard::load_without(&config, FEATURE_RAW_SYN_COOKIE).map_err(|e| e.to_string())?;
            g.policy_maps()
                .map_err(|e| e.to_string())?
                .write(&Contents::of(&config, &Extra::new()), &config)
                .map_err(|e| e.to_string())?;
            Some(g)
        } else {
            None
        };
        // Every run takes its path: the cookie SYN XDP_TX, counted as syn_cookie; the SYN to 587
        // XDP_DROP, counted as syn_cookie_unavailable.
        let mut paths = vec![
            ("the cookie SYN", &guard, &syn, XDP_TX, Reason::SynCookie),
            (
                "the SYN to 587 (no listener)",
                &guard,
                &unanswerable,
                XDP_DROP,
                Reason::SynCookieUnavailable,
            ),
        ];
        if let Some(g) = &older {
            paths.push((
                "the cookie SYN, from the listener",
                g,
                &syn,
                XDP_TX,
                Reason::SynCookie,
            ));
        }
        for (what, g, packet, retval, reason) in paths {
            let p = g.xdp().map_err(|e| e.to_string())?;
            let before = g.counters().map_err(|e| e.to_string())?;
            for _ in 0..1000 {
                let r = p.run(packet, 1);
                if r.retval != retval {
                    return Err(format!("{what} returned {} ({retval} expected)", r.retval));
                }
            }
            let delta = g.counters().map_err(|e| e.to_string())?.delta(&before);
            if delta != [(reason, 1000)] {
                return Err(format!("{what} moved {delta:?}"));
            }
        }
        setups.push((tracked, guard, older));
    }
    // Both table sizes' programs in one rotation, beside the floor and xdp-filter each time: a
    // drift of the machine's speed falls on both sizes alike, and flatness compares like with
    // like.
    let mut programs: Vec<(&dyn Timed, &[u8])> = Vec::new();
    for (_, guard, older) in &setups {
        let program = guard.xdp().map_err(|e| e.to_string())?;
        programs.extend([
            (program as &dyn Timed, syn.as_slice()),
            (program, &unanswerable),
            (floor, &syn),
            (&peer, &syn),
        ]);
        if let Some(g) = older {
            programs.push((g.xdp().map_err(|e| e.to_string())?, &syn));
        }
        if let Some(p) = cookie_only {
            programs.push((p, &syn));
        }
    }
    let times = rotating_single_runs(programs.len(), RUNS, TRIALS, |p, _| {
        programs[p].0.run(programs[p].1, 1).ns
    });
    let mut t = times.into_iter().map(stats);
    let mut rows = Vec::new();
    for (tracked, _, older) in &setups {
        let (mailguard, no_listener, floor_s, peer_s) = (
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
            t.next().expect("4"),
        );
        let from_listener = older.as_ref().and_then(|_| t.next());
        let cookie_only = cookie_only.and_then(|_| t.next());
        println!(
            "cookies: {tracked} tracked sources: mailguard {:.0} ns (no listener {:.0}), floor {:.0}, xdp-filter {:.0} (single runs)",
            mailguard.median, no_listener.median, floor_s.median, peer_s.median
        );
        rows.push(Row {
            tracked: *tracked,
            mailguard,
            no_listener,
            from_listener,
            cookie_only,
            floor: floor_s,
            peer: peer_s,
        });
    }
    Ok(Results {
        rows,
        peer_version: peer.version.clone(),
        from_the_syn,
    })
}

/// The flood SYN: no options, port 25, from a source never seen.
fn syn_packet() -> Vec<u8> {
    Packet::v4("198.19.7.7", "198.18.0.1", tcp(40000, 25, SYN)).build()
}

pub fn report(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n## A flood SYN answered with a SYN cookie\n");
    let _ = writeln!(
        s,
        "A SYN without options (what flood tools send) to port 25 from a source never seen, answered in XDP with the kernel's SYN cookie (`syn_cookies = \"always\"`: {}, the SYN rewritten into a SYN-ACK, both checksums, XDP_TX), beside the floor and xdp-filter ({}, which passes it) on the same packet. Single runs (repeat 1): the answer rewrites the packet, which BPF_PROG_TEST_RUN's repeat would then run again; a single run starts from the SYN each time, and includes the test loop's own timer reads, the floor's and xdp-filter's too. {RUNS} single runs of each program in {TRIALS} trials, their order rotating, the programs of both table sizes (each beside its own runs of the floor and xdp-filter) in the same trials, so that a drift of the machine's speed falls on both sizes alike; medians of the trials' means with min-max. Each table size first checks that 1000 runs of each path returned its action and moved its counter.\n",
        if r.from_the_syn {
            "this kernel makes the cookie from the SYN alone, `bpf_tcp_raw_gen_syncookie_ipv4`, on port 25 marked in `MG_COOKIE_PORTS`; the \"from the listener\" column is the way of kernels before 6.0, measured here too: the listener found by `bpf_skc_lookup_tcp`, the cookie from `bpf_tcp_gen_syncookie`"
        } else {
            "this kernel makes the cookie from the listener found by `bpf_skc_lookup_tcp`, with `bpf_tcp_gen_syncookie`"
        },
        r.peer_version
    );
    let _ = writeln!(
        s,
        "| tracked sources | mailguard ns (min-max) | mailguard, no listener ns | mailguard, from the listener ns | the kernel's cookie alone ns | floor ns | xdp-filter ns | mailguard / xdp-filter |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} | {} | {} | {:.0} | {:.0} | {:.2}x |",
            row.tracked,
            row.mailguard.median,
            row.mailguard.min,
            row.mailguard.max,
            row.no_listener.median,
            row.from_listener
                .as_ref()
                .map_or("-".to_string(), |f| format!("{:.0}", f.median)),
            row.cookie_only
                .as_ref()
                .map_or("-".to_string(), |f| format!("{:.0}", f.median)),
            row.floor.median,
            row.peer.median,
            row.mailguard.median / row.peer.median
        );
    }
    if let Some(row) = r.rows.first() {
        let _ = writeln!(
            s,
            "\nWhere the time goes ({} tracked sources; the floor taken off): the path to the answer up to {} {:.0} ns (the \"no listener\" column: a SYN to 587, where nothing listens, dropped as `syn_cookie_unavailable`); the cookie ({}) and the rewrite into a SYN-ACK with both checksums {:.0} ns; xdp-filter's whole verdict {:.0} ns.{}",
            row.tracked,
            if r.from_the_syn {
                "the lookup of the port's mark that finds none"
            } else {
                "the socket lookup that finds no listener"
            },
            row.no_listener.median - row.floor.median,
            if r.from_the_syn {
                "`bpf_tcp_raw_gen_syncookie_ipv4`: the kernel's SipHash of the connection and the MSS table"
            } else {
                "`bpf_tcp_gen_syncookie`: the kernel's SipHash of the connection, the MSS table, marking the listener"
            },
            row.mailguard.median - row.no_listener.median,
            row.peer.median - row.floor.median,
            row.from_listener.as_ref().map_or(String::new(), |f| format!(
                " Made the older way, from the listener, the whole answer costs {:.0} ns ({:+.0} ns).",
                f.median - row.floor.median,
                f.median - row.mailguard.median
            ))
        );
        if let Some(c) = &row.cookie_only {
            let _ = writeln!(
                s,
                "\nThe kernel's cookie alone (`xdp_cookie_only`, a reference program: the floor, a bounds check and `bpf_tcp_raw_gen_syncookie_ipv4` on the packet's own headers; no policy, no rewrite, no answer) costs {:.0} ns, {:.0} ns over the floor, against xdp-filter's {:.0} ns ({:.0} over the floor) for its whole verdict on the same packet: {}",
                c.median,
                c.median - row.floor.median,
                row.peer.median,
                row.peer.median - row.floor.median,
                if c.median > row.peer.median {
                    "no answer made with the kernel's cookie, which the kernel must be able to validate, can cost as little as xdp-filter's verdict here."
                } else {
                    "an answer with the kernel's cookie could cost as little as xdp-filter's verdict here."
                }
            );
        }
    }
    if let [small, large] = r.rows.as_slice() {
        let flat = large.mailguard.median / small.mailguard.median;
        let below = r
            .rows
            .iter()
            .all(|row| row.mailguard.median <= row.peer.median);
        let _ = writeln!(
            s,
            "\nTargets (issue 23): at most xdp-filter's cost on the same packet: **{}**; flat within 10% from {} to {} tracked sources: **{}** ({:+.1}%).",
            if below { "met" } else { "NOT met" },
            small.tracked,
            large.tracked,
            if (flat - 1.0).abs() <= 0.10 {
                "met"
            } else {
                "NOT met"
            },
            (flat - 1.0) * 100.0
        );
    }
    s
}

pub fn splice(path: &std::path::Path, section: &str) -> Result<(), String> {
    crate::report::splice(path, "\n## A flood SYN answered with a SYN cookie", section)
}
