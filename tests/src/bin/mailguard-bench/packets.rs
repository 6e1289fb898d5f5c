//! Section 1: the per-packet cost of each case, mailguard beside the floor and xdp-filter on
//! identical packets, and the checks that every run took the intended path.

use crate::measure::{
    CHECK_RUNS, Stats, TAIL_RUNS, Timed, ns_per_run, p99_single, ratios, stats, trials_each,
};
use crate::peer::XdpFilter;
use crate::{XDP_ABORTED, XDP_DROP, XDP_PASS};
use aya::programs::Xdp;
use guard_common::{
    BUDGET_ACTIVE, ClassBudget, Gcra, MailClass, Reason, SourceKey, prefix_mask, source_bucket,
    source_buckets,
};
use guard_tests::harness::{mark_verified, set_connections};
use mailguard::{
    config::Config,
    kernel::guard::Guard,
    kernel::policy::{Contents, Extra},
};

pub(crate) struct Case {
    pub(crate) name: &'static str,
    /// The name on the plot.
    pub(crate) short: &'static str,
    pub(crate) packet: Vec<u8>,
    pub(crate) reason: Reason,
    /// The product's target ratio to the floor, and the issue that set it.
    pub(crate) target: Option<(f64, &'static str)>,
    /// Whether the target also asks mailguard to cost less than xdp-filter on this packet.
    pub(crate) below_peer: bool,
}

/// One packet measured on the three programs, trials interleaved.
pub(crate) struct Row<'a> {
    pub(crate) case: &'a Case,
    pub(crate) mailguard: Stats,
    pub(crate) floor: Stats,
    pub(crate) peer: Stats,
    /// mailguard over the floor, trial by trial.
    pub(crate) ratio: Stats,
    /// xdp-filter over the floor, trial by trial.
    pub(crate) peer_ratio: Stats,
    /// 99th percentiles of single runs: mailguard, floor, xdp-filter.
    pub(crate) p99: [f64; 3],
    /// What xdp-filter did with the packet.
    pub(crate) peer_verdict: &'static str,
    /// The baseline build of mailguard (`MAILGUARD_BENCH_BASELINE`), in the same trials.
    pub(crate) baseline: Option<Stats>,
}

/// Verifies every program's path on each packet, then times them side by side.
pub(crate) fn measure_cases<'a>(
    guard: &Guard,
    baseline: Option<&Guard>,
    floor: &Xdp,
    peer: &XdpFilter,
    cases: &'a [Case],
) -> Result<Vec<Row<'a>>, String> {
    let program = guard.xdp().map_err(|e| e.to_string())?;
    let mut verdicts = Vec::new();
    for c in cases {
        check_path(guard, c.name, &c.packet, c.reason, CHECK_RUNS)?;
        if let Some(b) = baseline {
            check_path(b, c.name, &c.packet, c.reason, CHECK_RUNS)
                .map_err(|e| format!("the baseline build: {e}"))?;
        }
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
    let base_program = baseline
        .map(|b| b.xdp().map_err(|e| e.to_string()))
        .transpose()?;
    let mut programs: Vec<&dyn Timed> = vec![program, floor, peer];
    if let Some(b) = base_program {
        programs.push(b);
    }
    let timed = trials_each(&programs, &packets);
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
            baseline: base_program.map(|_| stats(t[3].clone())),
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
        if let Some(b) = &row.baseline {
            println!(
                "{:<64} baseline  {:>4.0} ns ({:.0}-{:.0}); this build {:>4.0} ns ({:.0}-{:.0})",
                "",
                b.median,
                b.min,
                b.max,
                row.mailguard.median,
                row.mailguard.min,
                row.mailguard.max
            );
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The baseline build (`MAILGUARD_BENCH_BASELINE`) beside this one, per packet: medians of
/// the same trials, and whether the difference stays within the two builds' trial spread.
pub(crate) fn baseline_table(rows: &[Row]) -> Option<String> {
    let mut out = String::from(
        "| packet | baseline ns (min-max) | this build ns (min-max) | difference | within the spread |\n|---|---:|---:|---:|---|\n",
    );
    for r in rows {
        let b = r.baseline.as_ref()?;
        let a = &r.mailguard;
        let overlap = a.min <= b.max && b.min <= a.max;
        out.push_str(&format!(
            "| {} | {:.0} ({:.0}-{:.0}) | {:.0} ({:.0}-{:.0}) | {:+.1} | {} |\n",
            r.case.name,
            b.median,
            b.min,
            b.max,
            a.median,
            a.min,
            a.max,
            a.median - b.median,
            if overlap { "yes" } else { "no" }
        ));
    }
    Some(out)
}

/// Runs `packet` through xdp-filter `CHECK_RUNS` times: its own counters must show exactly
/// that many packets under the verdict the runs returned, and nothing else.
pub(crate) fn check_peer_path(
    peer: &XdpFilter,
    name: &str,
    packet: &[u8],
) -> Result<&'static str, String> {
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
pub(crate) const CAP: u32 = 50;

/// The mx budget charges every SYN (rate state, cap check, rate) and never refuses one at
/// the rates BPF_PROG_TEST_RUN reaches: one admission per nanosecond, a second's burst.
pub(crate) fn charge_every_syn(guard: &mut Guard) -> Result<(), String> {
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
pub(crate) fn prepared(config: &Config) -> Result<Guard, String> {
    prepared_from(None, config)
}

/// As `prepared`, from `object` (another build's) when given.
pub(crate) fn prepared_from(object: Option<&[u8]>, config: &Config) -> Result<Guard, String> {
    let mut guard = loaded_from(object, config)?;
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

/// An IPv6 /64 source (in 2001:db8::/32) whose key has the bucket of `key` in a table of
/// `buckets` buckets.
pub(crate) fn bucket_neighbour(key: &SourceKey, buckets: u32) -> Result<SourceKey, String> {
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
pub(crate) fn loaded(config: &Config) -> Result<Guard, String> {
    loaded_from(None, config)
}

/// As `loaded`, from `object` (another build's) when given.
pub(crate) fn loaded_from(object: Option<&[u8]>, config: &Config) -> Result<Guard, String> {
    let mut guard = match object {
        Some(o) => Guard::load_object(o, config),
        None => Guard::load(config),
    }
    .map_err(|e| e.to_string())?;
    guard
        .policy_maps()
        .map_err(|e| e.to_string())?
        .write(&Contents::of(config, &Extra::new()), config)
        .map_err(|e| e.to_string())?;
    Ok(guard)
}

pub(crate) fn check_path(
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
