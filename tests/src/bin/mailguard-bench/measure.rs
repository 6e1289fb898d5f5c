//! Timing with BPF_PROG_TEST_RUN: trials alternating mailguard and the floor, medians, ratios.

use aya::programs::{TestRun, TestRunOptions, Xdp};

/// Runs per timed trial (as in ../shared/TOOLCHAIN.md's baselines).
pub const REPEAT: u32 = 2_000_000;
pub const TRIALS: usize = 21;
/// Single runs behind each p99.
pub const TAIL_RUNS: usize = 20_000;
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

/// Largest over smallest of `values` (1 for none).
pub fn spread(values: &[f64]) -> f64 {
    let max = values.iter().cloned().fold(f64::MIN, f64::max);
    let min = values.iter().cloned().fold(f64::MAX, f64::min);
    if values.is_empty() { 1.0 } else { max / min }
}

/// One BPF_PROG_TEST_RUN call: the program's verdict and the mean time per run.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub retval: u32,
    pub ns: f64,
}

/// A program the benchmark can time: mailguard, the floor, or a peer opened by id.
pub trait Timed {
    /// Runs `packet` `repeat` times in one BPF_PROG_TEST_RUN call. The kernel reports the mean
    /// time per run in whole nanoseconds, leaving out time the test loop spent rescheduled;
    /// timing the call from userspace would add a fixed set-up cost of several milliseconds.
    fn run(&self, packet: &[u8], repeat: u32) -> Run;
}

impl Timed for Xdp {
    fn run(&self, packet: &[u8], repeat: u32) -> Run {
        let r = self
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        Run {
            retval: r.return_value,
            ns: r.duration.as_nanos() as f64,
        }
    }
}

/// Mean nanoseconds per run over `runs` runs in one BPF_PROG_TEST_RUN call.
pub fn ns_per_run(program: &dyn Timed, packet: &[u8], runs: u32) -> f64 {
    program.run(packet, runs).ns
}

/// Single runs (repeat 1) of `paths` programs on `sources` packets, one run of each path per
/// packet, their order rotating from packet to packet, split into `trials` trials:
/// `run(path, packet)` times one run. Returns each path's per-trial means.
pub fn rotating_single_runs(
    paths: usize,
    sources: u32,
    trials: usize,
    mut run: impl FnMut(usize, u32) -> f64,
) -> Vec<Vec<f64>> {
    let per_trial = sources / trials as u32;
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(trials); paths];
    for trial in 0..trials as u32 {
        let mut sums = vec![0f64; paths];
        for i in trial * per_trial..(trial + 1) * per_trial {
            for k in 0..paths {
                let j = (i as usize + k) % paths;
                sums[j] += run(j, i);
            }
        }
        for (t, sum) in times.iter_mut().zip(sums) {
            t.push(sum / per_trial as f64);
        }
    }
    times
}

/// One measured comparison: mailguard, and its per-trial ratio to the floor.
pub struct Comparison {
    pub mailguard: Stats,
    pub ratio: Stats,
}

/// Times every program on the same packet over `TRIALS` trials of `REPEAT` runs, the order of
/// the programs rotating from trial to trial; returns each program's per-trial means.
pub fn trials(programs: &[&dyn Timed], packet: &[u8]) -> Vec<Vec<f64>> {
    trials_each(programs, &[packet]).remove(0)
}

/// As `trials`, for several packets at once: every trial times every packet on every program
/// (the programs' order rotating), so that a noisy spell of the machine falls on a few trials of
/// every packet, where the medians leave it out, rather than on all the trials of one.
/// Returns, per packet, each program's per-trial means.
pub fn trials_each(programs: &[&dyn Timed], packets: &[&[u8]]) -> Vec<Vec<Vec<f64>>> {
    let mut times: Vec<Vec<Vec<f64>>> = packets
        .iter()
        .map(|_| {
            programs
                .iter()
                .map(|_| Vec::with_capacity(TRIALS))
                .collect()
        })
        .collect();
    for trial in 0..TRIALS {
        for (p, packet) in packets.iter().enumerate() {
            for k in 0..programs.len() {
                let i = (trial + p + k) % programs.len();
                times[p][i].push(ns_per_run(programs[i], packet, REPEAT));
            }
        }
    }
    times
}

/// Each trial of `a` minus the trial of `b` run beside it.
pub fn differences(a: &[f64], b: &[f64]) -> Stats {
    stats(a.iter().zip(b).map(|(a, b)| a - b).collect())
}

/// Each trial of `a` divided by the trial of `b` run beside it, so that drift in the
/// machine's speed cancels out.
pub fn ratios(a: &[f64], b: &[f64]) -> Stats {
    stats(a.iter().zip(b).map(|(a, b)| a / b).collect())
}

/// Times several mailguards (one per scale of a table) and the floor in the same rotating
/// trials on one packet: each one's figures and per-trial ratio to the floor, so that the
/// machine's drift between them cannot pass for a difference of cost.
pub fn compare_all(mailguards: &[&Xdp], floor: &Xdp, packet: &[u8]) -> Vec<Comparison> {
    let mut programs: Vec<&dyn Timed> = mailguards.iter().map(|x| *x as &dyn Timed).collect();
    programs.push(floor);
    let times = trials(&programs, packet);
    let floor_times = &times[mailguards.len()];
    times[..mailguards.len()]
        .iter()
        .map(|t| Comparison {
            mailguard: stats(t.clone()),
            ratio: ratios(t, floor_times),
        })
        .collect()
}

/// The 99th percentile of `n` single runs (repeat 1) of one packet, kernel-measured; every
/// single run includes the test loop's own timer reads, the floor's as much as the others'.
pub fn p99_single(program: &dyn Timed, packet: &[u8], n: usize) -> f64 {
    let mut v: Vec<f64> = (0..n).map(|_| ns_per_run(program, packet, 1)).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[(n * 99).div_ceil(100) - 1]
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
