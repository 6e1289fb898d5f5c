//! What an interrupted lab leaves behind, and removing it. A lab ended by Ctrl-C or SIGTERM runs
//! no destructors: its Postfix, flood generator and listeners would keep running in its
//! namespaces, and the pins of its mailguard (the sock_ops link on the root cgroup among them)
//! would stay. Two safeguards, both used by `Lab::create`:
//!
//! - `remove_lab_on_interrupt`: at SIGINT, SIGTERM or SIGHUP, a process holding the lab removes
//!   it, says so, and exits with 128 + the signal;
//! - `sweep`: under the lab lock, before a lab is built, removes what a run killed outright
//!   (SIGKILL) left, and says what it removed.
//!
//! Only lab state is touched: processes inside the lab's own namespaces (the namespaces only the
//! lab creates; every process there was started by a lab), signalled by pid; pin and temporary
//! directories named after a lab process that no longer runs, or after this one at an
//! interrupt.

use std::{
    fs,
    os::fd::RawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Once,
        atomic::{AtomicBool, AtomicI32, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The lab's network namespaces.
pub const NAMESPACES: [&str; 6] = [
    "mg-switch",
    "mg-mail",
    "mg-client",
    "mg-attacker",
    "mg-mail2",
    "mg-lapi",
];
/// A lab's directories, `PREFIX-<pid of the process that built the lab>`: its mailguard's pins
/// in `/sys/fs/bpf/`, and its temporary directory in the system's.
pub const LAB_DIR_PREFIX: &str = "mailguard-lab";
const BPFFS: &str = "/sys/fs/bpf";

/// Whether this process holds the lab (set under the lab lock): only then is there a lab of
/// its own to remove at an interrupt.
static HOLDING: AtomicBool = AtomicBool::new(false);
/// Set while the interrupt thread removes the lab.
static REMOVING: AtomicBool = AtomicBool::new(false);
/// The write end of the pipe the signal handler writes the signal's number to.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Marks the lab held (or released) by this process.
pub fn set_holding(held: bool) {
    HOLDING.store(held, Ordering::SeqCst);
}

/// Where the lab of process `pid` pins its mailguard's state (`Mailguard::start`).
pub fn pin_dir_of(pid: u32) -> PathBuf {
    Path::new(BPFFS).join(format!("{LAB_DIR_PREFIX}-{pid}"))
}

/// The temporary directory of the lab of process `pid` (`TempDir::new(LAB_DIR_PREFIX)`).
pub fn temp_dir_of(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("{LAB_DIR_PREFIX}-{pid}"))
}

/// Whether a process `pid` is alive: it exists and has not ended (a zombie, ended and waiting
/// for its parent to collect it, is not).
pub fn running(pid: i32) -> bool {
    // SAFETY: signal 0 only probes whether the pid exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        return false;
    }
    match process_stat(pid) {
        Ok((_, state)) => !matches!(state, 'Z' | 'X'),
        // Gone since the probe.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    }
}

/// A process's command and state letter (`R`, `S`, `D`, `Z`...), from `/proc/<pid>/stat`.
pub fn process_stat(pid: i32) -> std::io::Result<(String, char)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // "pid (command) state ...": the command may hold spaces and parentheses itself.
    stat.split_once('(')
        .and_then(|(_, rest)| rest.rsplit_once(')'))
        .and_then(|(command, rest)| Some((command.to_string(), rest.trim_start().chars().next()?)))
        .ok_or_else(|| std::io::Error::other(format!("unreadable /proc/{pid}/stat: {stat:?}")))
}

/// Installs, once per process, the handlers that remove the lab at SIGINT, SIGTERM or SIGHUP.
/// The handler only writes the signal's number to a pipe (async-signal-safe); a thread reads
/// it, removes the lab when this process holds it, and exits with 128 + the signal.
pub fn remove_lab_on_interrupt() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: pipe2 fills the two descriptors of a new pipe.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            eprintln!(
                "lab: no pipe for the interrupt handler ({}): an interrupted lab is removed by the next run",
                std::io::Error::last_os_error()
            );
            return;
        }
        SIGNAL_PIPE.store(fds[1], Ordering::SeqCst);
        let read_end = fds[0];
        thread::spawn(move || {
            let mut signal = 0u8;
            // SAFETY: reads one byte from the pipe this thread owns the read end of.
            while unsafe { libc::read(read_end, (&raw mut signal).cast(), 1) } != 1 {}
            if HOLDING.load(Ordering::SeqCst) {
                REMOVING.store(true, Ordering::SeqCst);
                eprintln!(
                    "\nlab: signal {signal}: removing the lab (its processes, namespaces, mailguard pins)"
                );
                for line in sweep(true) {
                    eprintln!("lab: {line}");
                }
            }
            // _exit: the main thread may be in exit(3) already (see `wait_for_removal`).
            // SAFETY: ends the process at once; stderr is unbuffered.
            unsafe { libc::_exit(128 + i32::from(signal)) };
        });
        // SAFETY: registers a plain function without arguments.
        unsafe { libc::atexit(wait_for_removal) };
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: a zeroed sigaction with a handler that only calls write(2).
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as *const () as usize;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut());
            }
        }
    });
}

/// At exit: while the lab is being removed, the process does not end before the removal thread
/// ends it (a main thread whose lab vanished under it fails and returns at once).
extern "C" fn wait_for_removal() {
    while REMOVING.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(100));
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    let byte = signal as u8;
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    // SAFETY: write(2) is async-signal-safe; the pipe stays open for the process's life.
    unsafe { libc::write(fd, (&raw const byte).cast(), 1) };
}

/// Removes lab leftovers: the processes in the lab's namespaces (SIGTERM, then SIGKILL after 3
/// s; listed again until none is left, up to three rounds), the namespaces, and the pin and
/// temporary directories of lab processes that no longer run (and this process's own when
/// `own_too`). Returns a line per thing removed.
pub fn sweep(own_too: bool) -> Vec<String> {
    let mut removed = Vec::new();
    for ns in NAMESPACES {
        if !Path::new("/run/netns").join(ns).exists() {
            continue;
        }
        // Again while the namespace has processes (up to three rounds): one may have started a
        // child between the listing and its end.
        let (mut pids, mut survivors) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let round: Vec<i32> = pids_in(ns).into_iter().filter(|p| running(*p)).collect();
            if round.is_empty() {
                break;
            }
            survivors = end_processes(&round);
            for p in round {
                if !pids.contains(&p) {
                    pids.push(p);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        removed.push(if pids.is_empty() {
            format!("namespace {ns} removed")
        } else if survivors.is_empty() {
            format!("namespace {ns} removed, its processes ended: {pids:?}")
        } else {
            format!(
                "namespace {ns} removed, its processes signalled: {pids:?}; STILL RUNNING after SIGKILL: {survivors:?}"
            )
        });
    }
    let dirs = [
        (PathBuf::from(BPFFS), "mailguard pins"),
        (std::env::temp_dir(), "lab directory"),
    ];
    for (parent, what) in dirs {
        for dir in stale_dirs(&parent, own_too) {
            match fs::remove_dir_all(&dir) {
                Ok(()) => removed.push(format!("{what} {} removed", dir.display())),
                Err(e) => removed.push(format!("{what} {}: cannot remove: {e}", dir.display())),
            }
        }
    }
    removed
}

/// Pids of the processes in namespace `ns` (`ip netns pids`), this process left out.
pub fn pids_in(ns: &str) -> Vec<i32> {
    let out = Command::new("ip").args(["netns", "pids", ns]).output();
    let own = std::process::id() as i32;
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != own)
            .collect()
    })
    .unwrap_or_default()
}

/// SIGTERM to each of `pids`, SIGKILL to those still there after 3 s, then up to 3 s more for
/// them to end; returns those that still run. A child of this process is reaped, so that it
/// does not linger as a zombie.
fn end_processes(pids: &[i32]) -> Vec<i32> {
    let gone = |pid: i32| {
        // SAFETY: waitpid with WNOHANG reaps `pid` only if it is this process's exited child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        !running(pid)
    };
    for &pid in pids {
        // SAFETY: a process in the lab's own namespace, started by a lab.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !pids.iter().all(|&p| gone(p)) {
        thread::sleep(Duration::from_millis(50));
    }
    for &pid in pids.iter().filter(|&&p| !gone(p)) {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // A killed process ends in the kernel's own time: wait for it, so that what follows (the
    // namespace's removal, the caller's exit) does not race it.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !pids.iter().all(|&p| gone(p)) {
        thread::sleep(Duration::from_millis(50));
    }
    pids.iter().copied().filter(|&p| !gone(p)).collect()
}

/// Lab directories `parent/LAB_DIR_PREFIX-<pid>` (or `-<pid>-<what>`: a second mail host's
/// pins) whose process no longer runs (or is this one, when `own_too`).
fn stale_dirs(parent: &Path, own_too: bool) -> Vec<PathBuf> {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid: u32 = name
                .strip_prefix(LAB_DIR_PREFIX)?
                .strip_prefix('-')?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            ((pid == own && own_too) || (pid != own && !running(pid as i32))).then(|| e.path())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_running_and_a_live_process_is() {
        let mut sleeper = Command::new("sleep").arg("30").spawn().expect("run sleep");
        let mut ended = Command::new("true").spawn().expect("run true");
        let ended_pid = ended.id() as i32;
        // Not reaped yet: once `true` has exited it is a zombie of this process.
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(ended_pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        let zombie_exists = fs::metadata(format!("/proc/{ended_pid}")).is_ok();
        let (zombie_running, sleeper_running) = (running(ended_pid), running(sleeper.id() as i32));
        let sleeper_stat = process_stat(sleeper.id() as i32);
        ended.wait().expect("reap true");
        let _ = sleeper.kill();
        sleeper.wait().expect("reap sleep");
        assert!(
            zombie_exists,
            "the exited child stays a zombie until reaped"
        );
        assert!(!zombie_running, "a zombie does not run");
        assert!(sleeper_running, "a sleeping process runs");
        assert!(!running(ended_pid), "a reaped process does not run");
        let (command, state) = sleeper_stat.expect("stat of sleep");
        assert_eq!(command, "sleep", "the command in /proc/<pid>/stat");
        assert!(
            matches!(state, 'R' | 'S'),
            "sleep is running or sleeping, not {state}"
        );
    }

    #[test]
    fn stale_dirs_are_those_of_ended_processes_and_of_this_one_only_when_asked() {
        let mut child = Command::new("true").spawn().expect("run true");
        let ended = child.id();
        child.wait().expect("wait for true");
        let own = std::process::id();
        // SAFETY: getppid has no preconditions; the parent runs while this test does.
        let parent_pid = unsafe { libc::getppid() } as u32;
        let parent = std::env::temp_dir().join(format!("leftovers-test-{own}"));
        let _ = fs::remove_dir_all(&parent);
        for name in [
            format!("{LAB_DIR_PREFIX}-{ended}"),
            format!("{LAB_DIR_PREFIX}-{ended}-mail2"),
            format!("{LAB_DIR_PREFIX}-{own}"),
            format!("{LAB_DIR_PREFIX}-{parent_pid}"),
            format!("{LAB_DIR_PREFIX}-not-a-pid"),
            format!("other-{ended}"),
        ] {
            fs::create_dir_all(parent.join(name)).expect("create test directory");
        }
        let names = |own_too: bool| {
            let mut v: Vec<String> = stale_dirs(&parent, own_too)
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let (after_a_kill, at_an_interrupt) = (names(false), names(true));
        fs::remove_dir_all(&parent).expect("remove test directory");
        assert_eq!(
            after_a_kill,
            [
                format!("{LAB_DIR_PREFIX}-{ended}"),
                format!("{LAB_DIR_PREFIX}-{ended}-mail2"),
            ]
        );
        let mut both = vec![
            format!("{LAB_DIR_PREFIX}-{ended}"),
            format!("{LAB_DIR_PREFIX}-{ended}-mail2"),
            format!("{LAB_DIR_PREFIX}-{own}"),
        ];
        both.sort();
        assert_eq!(at_an_interrupt, both);
    }
}
