//! Timing with BPF_PROG_TEST_RUN: trials alternating mailguard and the floor, medians, ratios.

use aya::programs::{TestRun, TestRunOptions, Xdp};

/// Runs per timed trial (as in ../shared/TOOLCHAIN.md's baselines).
pub const REPEAT: u32 = 10_000_000;
pub const TRIALS: usize = 15;
/// Runs per path check.
pub const CHECK_RUNS: u32 = 1_000_000;

#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    Stats {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Mean nanoseconds per run over `runs` runs in one BPF_PROG_TEST_RUN call, as the kernel
/// measures it (whole nanoseconds; time the test loop spent rescheduled is left out). Timing
/// the call from userspace would add a fixed set-up cost of several milliseconds per call.
pub fn ns_per_run(program: &Xdp, packet: &[u8], runs: u32) -> f64 {
    let r = program
        .test_run(TestRunOptions {
            data_in: Some(packet),
            repeat: runs,
            ..TestRunOptions::new()
        })
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
    r.duration.as_nanos() as f64
}

/// One measured comparison: mailguard and the floor, and their per-trial ratio.
pub struct Comparison {
    pub mailguard: Stats,
    pub floor: Stats,
    pub ratio: Stats,
}

/// Alternates the two programs over `TRIALS` trials of `REPEAT` runs on the same packet.
/// Each mailguard trial is divided by the floor trial run beside it, so that drift in the
/// machine's speed cancels out.
pub fn compare(mailguard: &Xdp, floor: &Xdp, packet: &[u8]) -> Comparison {
    let (mut mg, mut fl) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        if trial % 2 == 0 {
            fl.push(ns_per_run(floor, packet, REPEAT));
            mg.push(ns_per_run(mailguard, packet, REPEAT));
        } else {
            mg.push(ns_per_run(mailguard, packet, REPEAT));
            fl.push(ns_per_run(floor, packet, REPEAT));
        }
    }
    let ratio = stats(mg.iter().zip(&fl).map(|(m, f)| m / f).collect());
    Comparison {
        mailguard: stats(mg),
        floor: stats(fl),
        ratio,
    }
}

/// Single runs (repeat 1) over many different packets: the mean kernel-measured time of one
/// run, for paths a repeated packet cannot exercise (a new source each time). Includes the
/// test loop's own timer reads, as the floor measured the same way does.
pub fn single_runs(program: &Xdp, packets: &[Vec<u8>]) -> f64 {
    let total: f64 = packets.iter().map(|p| ns_per_run(program, p, 1)).sum();
    total / packets.len() as f64
}

/// (steal, total) jiffies of all CPUs from /proc/stat: the share of time the hypervisor took.
pub fn cpu_times() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    (
        fields.get(7).copied().unwrap_or(0),
        fields.iter().take(8).sum(),
    )
}
