//! BPF_PROG_TEST_RUN harness: the real XDP program, loaded but not attached, with a
//! configuration written into its maps. Each packet run must return the expected action and
//! move exactly the expected counter by exactly one.

use aya::{
    maps::{Array, HashMap, PerCpuArray},
    programs::{TestRun, TestRunOptions},
};
use guard_common::{
    AccountingEvent, Reason, SourceBucket, SourceKey, SourceState, Verdict, maps as names,
    source_bucket, source_buckets,
};
use mailguard::{
    config::Config,
    kernel::guard::{Counters, Guard},
    kernel::policy::{Contents, Extra},
    kernel::source_table::SourceTable,
};

/// Pins the calling thread to the first CPU it may run on.
/// Runs the calling thread on `cpus` only.
pub fn run_on(cpus: impl IntoIterator<Item = usize>) {
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

pub fn pin_to_one_cpu() {
    // SAFETY: cpu_set_t is plain data; the calls read and write only it, for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set),
            0
        );
        let first = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("a CPU");
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(first, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "pin to CPU {first}"
        );
    }
}

/// Sets the concurrent-connection count of a source as sock_ops keeps it: the count in
/// `CONNECTIONS`, and its bucket's count in `SOURCES` moved by the difference
/// (`tracked_sources`: the loaded configuration's, which sizes the table).
pub fn set_connections(
    guard: &mut Guard,
    tracked_sources: u32,
    key: SourceKey,
    count: u32,
) -> Result<(), String> {
    let map = guard
        .map_mut(names::CONNECTIONS)
        .ok_or("no connections map")?;
    let mut conns: HashMap<_, SourceKey, u32> =
        HashMap::try_from(map).map_err(|e| e.to_string())?;
    let old = conns.get(&key, 0).unwrap_or(0);
    conns.insert(key, count, 0).map_err(|e| e.to_string())?;
    let n = bucket_connections(guard, tracked_sources, &key)?;
    set_bucket_connections(
        guard,
        tracked_sources,
        &key,
        n.wrapping_add(count).wrapping_sub(old),
    )
}

/// The connection count of a source's bucket in `SOURCES`, as sock_ops keeps it.
pub fn bucket_connections(
    guard: &Guard,
    tracked_sources: u32,
    key: &SourceKey,
) -> Result<u32, String> {
    let map = guard.map(names::SOURCES).ok_or("no sources map")?;
    let table: Array<_, SourceBucket> = Array::try_from(map).map_err(|e| e.to_string())?;
    let b = source_bucket(key.slot_hash(), source_buckets(tracked_sources));
    Ok(table.get(&b, 0).map_err(|e| e.to_string())?.connections)
}

/// Overwrites the connection count of a source's bucket alone (its slots stay as they are).
pub fn set_bucket_connections(
    guard: &mut Guard,
    tracked_sources: u32,
    key: &SourceKey,
    n: u32,
) -> Result<(), String> {
    let map = guard.map_mut(names::SOURCES).ok_or("no sources map")?;
    let mut table: Array<_, SourceBucket> = Array::try_from(map).map_err(|e| e.to_string())?;
    let b = source_bucket(key.slot_hash(), source_buckets(tracked_sources));
    let mut bucket = table.get(&b, 0).map_err(|e| e.to_string())?;
    bucket.connections = n;
    table.set(b, bucket, 0).map_err(|e| e.to_string())
}

/// Marks a source as having completed a connection, as sock_ops does (`VERIFIED`, class 0).
pub fn mark_verified(guard: &mut Guard, mut key: SourceKey) -> Result<(), String> {
    key.class = 0;
    let map = guard.map_mut(names::VERIFIED).ok_or("no verified map")?;
    let mut verified: HashMap<_, SourceKey, u64> =
        HashMap::try_from(map).map_err(|e| e.to_string())?;
    verified.insert(key, 1, 0).map_err(|e| e.to_string())
}

pub struct Harness {
    guard: Guard,
    config: Config,
}

/// One crafted packet and the reason it must be counted under.
pub struct Fixture {
    pub name: String,
    pub packet: Vec<u8>,
    pub expect: Reason,
}

impl Fixture {
    pub fn new(name: impl Into<String>, packet: Vec<u8>, expect: Reason) -> Fixture {
        Fixture {
            name: name.into(),
            packet,
            expect,
        }
    }
}

/// What one run did.
#[derive(Debug)]
pub struct Outcome {
    pub action: u32,
    pub counted: Vec<(Reason, u64)>,
}

impl Harness {
    /// Loads the program with `config_toml`. The calling thread is pinned to one CPU, so that
    /// per-CPU limiters see every run.
    pub fn new(config_toml: &str) -> Harness {
        Harness::without(config_toml, 0)
    }

    /// As `new`, with the programs told that the kernel lacks the optional features `absent`
    /// (`FEATURE_*` bits): the way mailguard works on older kernels, tested on this one.
    pub fn without(config_toml: &str, absent: u32) -> Harness {
        pin_to_one_cpu();
        let (config, _) =
            Config::parse(config_toml, "fixture config").expect("fixture config is valid");
        let mut guard =
            Guard::load_without(&config, absent).unwrap_or_else(|e| panic!("load: {e}"));
        guard
            .policy_maps()
            .expect("policy maps")
            .write(&Contents::of(&config, &Extra::new()), &config)
            .expect("apply config");
        Harness { guard, config }
    }

    pub fn reconfigure(&mut self, config_toml: &str) {
        let (config, _) =
            Config::parse(config_toml, "fixture config").expect("fixture config is valid");
        self.guard
            .policy_maps()
            .expect("policy maps")
            .write(&Contents::of(&config, &Extra::new()), &config)
            .expect("apply config");
        self.config = config;
    }

    pub fn guard(&self) -> &Guard {
        &self.guard
    }

    pub fn guard_mut(&mut self) -> &mut Guard {
        &mut self.guard
    }

    /// Sets the concurrent-connection count of a source, and its bucket's count with it, as
    /// sock_ops would.
    pub fn set_connections(&mut self, key: SourceKey, count: u32) {
        let tracked = self.config.budgets.tracked_sources;
        set_connections(&mut self.guard, tracked, key, count).expect("set connections");
    }

    /// The connection count of a source's bucket, as sock_ops keeps it.
    pub fn bucket_connections(&self, key: &SourceKey) -> u32 {
        let tracked = self.config.budgets.tracked_sources;
        bucket_connections(&self.guard, tracked, key).expect("bucket count")
    }

    /// Overwrites the connection count of a source's bucket alone (the source's count stays):
    /// a bucket shared with other sources' connections, or, below the count, one that no longer
    /// bounds it.
    pub fn set_bucket_connections(&mut self, key: &SourceKey, n: u32) {
        let tracked = self.config.budgets.tracked_sources;
        set_bucket_connections(&mut self.guard, tracked, key, n).expect("bucket count");
    }

    /// The concurrent-connection count of a source, as sock_ops keeps it (`None`: no entry).
    pub fn connections(&self, key: &SourceKey) -> Option<u32> {
        let map = self.guard.map(names::CONNECTIONS).expect("connections map");
        let conns: HashMap<_, SourceKey, u32> = HashMap::try_from(map).expect("hash map");
        conns.get(key, 0).ok()
    }

    /// How many times sock_ops (or XDP) recorded `event`, summed over CPUs.
    pub fn accounting(&self, event: AccountingEvent) -> u64 {
        let map = self.guard.map(names::ACCOUNTING).expect("accounting map");
        let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).expect("per-CPU array");
        array.get(&(event as u32), 0).expect("slot").iter().sum()
    }

    /// Marks a source as having completed a connection, as sock_ops would.
    pub fn mark_verified(&mut self, key: SourceKey) {
        mark_verified(&mut self.guard, key).expect("mark verified");
    }

    /// The `SLOT_*` flags of a source's slot, if it has one.
    pub fn slot_flags(&self, key: &SourceKey) -> Option<u32> {
        let map = self.guard.map(names::SOURCES).expect("sources map");
        let table = SourceTable::open(map).expect("source table");
        table.find_slot(key).map(|s| s.flags)
    }

    /// Removes a source from `VERIFIED` (as its LRU eviction would).
    pub fn forget_verified(&mut self, mut key: SourceKey) {
        key.class = 0;
        let map = self.guard.map_mut(names::VERIFIED).expect("verified map");
        let mut verified: HashMap<_, SourceKey, u64> = HashMap::try_from(map).expect("hash map");
        verified.remove(&key).expect("a verified source");
    }

    /// The rate state XDP keeps for a source, if any.
    pub fn source_state(&self, key: &SourceKey) -> Option<SourceState> {
        let map = self.guard.map(names::SOURCES).expect("sources map");
        SourceTable::open(map).expect("source table").find(key)
    }

    /// Runs a packet and returns what the program left in it (for XDP_TX rewrites).
    pub fn run_capture(&self, packet: &[u8]) -> (Outcome, Vec<u8>) {
        let before = self.counters();
        let mut out = vec![0u8; packet.len() + 256];
        let result = self
            .guard
            .xdp()
            .expect("xdp program")
            .test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        out.truncate(result.data_size_out as usize);
        (
            Outcome {
                action: result.return_value,
                counted: self.counters().delta(&before),
            },
            out,
        )
    }

    pub fn counters(&self) -> Counters {
        self.guard.counters().expect("read counters")
    }

    pub fn run(&self, packet: &[u8]) -> Outcome {
        let before = self.counters();
        let result = self
            .guard
            .xdp()
            .expect("xdp program")
            .test_run(TestRunOptions {
                data_in: Some(packet),
                repeat: 1,
                ..TestRunOptions::new()
            })
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
        Outcome {
            action: result.return_value,
            counted: self.counters().delta(&before),
        }
    }

    /// Runs `f` and checks it against `expect` and the verdict `action` (the reason's own
    /// verdict unless monitor mode says pass). Returns a description of any mismatch.
    pub fn check_with_action(&self, f: &Fixture, action: Verdict) -> Result<(), String> {
        let got = self.run(&f.packet);
        let mut problems = Vec::new();
        if got.action != action as u32 {
            problems.push(format!(
                "action {} (want {} = {})",
                got.action,
                action as u32,
                action.name()
            ));
        }
        if got.counted != [(f.expect, 1)] {
            let counted: Vec<String> = got
                .counted
                .iter()
                .map(|(r, n)| format!("{}+{n}", r.name()))
                .collect();
            problems.push(format!(
                "counted [{}] (want {}+1)",
                counted.join(", "),
                f.expect.name()
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}: {}", f.name, problems.join("; ")))
        }
    }

    pub fn check(&self, f: &Fixture) -> Result<(), String> {
        self.check_with_action(f, f.expect.verdict())
    }

    /// Checks every fixture and panics listing all mismatches; returns how many ran.
    pub fn check_all(&self, fixtures: &[Fixture]) -> usize {
        let failures: Vec<String> = fixtures
            .iter()
            .filter_map(|f| self.check(f).err())
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} fixtures failed:\n  {}",
            failures.len(),
            fixtures.len(),
            failures.join("\n  ")
        );
        fixtures.len()
    }
}
