//! Where a running mailguard leaves what other commands need: maps pinned under the pin
//! directory (bpffs) and a small JSON state file under the run directory.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::maps::{Array, Map, MapData, PerCpuArray};
use guard_common::{Settings, maps as names};
use serde::{Deserialize, Serialize};

use crate::kernel::guard::{Counters, GuardError};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mailguard";
pub const DEFAULT_RUN_DIR: &str = "/run/mailguard";

/// Where the state of one mailguard lives.
#[derive(Clone, Debug)]
pub struct Dirs {
    pub pin: PathBuf,
    pub run: PathBuf,
}

impl Dirs {
    pub fn state_file(&self) -> PathBuf {
        self.run.join("state.json")
    }
}

/// What `run` records about itself for `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RunState {
    pub pid: u32,
    pub interface: String,
    /// "native" or "skb".
    pub mode: String,
    pub monitor: bool,
    pub config: Option<PathBuf>,
    pub program_id: u32,
    pub verified_instructions: Option<u32>,
    /// Seconds since the Unix epoch.
    pub started: u64,
    /// MX-only mode: port 25 accepts only the `mx_allow` list.
    #[serde(default)]
    pub mx_only: bool,
    /// The lists in force (sizes, refresh status), updated whenever they change.
    #[serde(default)]
    pub lists: Vec<crate::feeds::saved::ListSummary>,
    /// The running kernel's release (`uname -r`).
    #[serde(default)]
    pub kernel: String,
    /// What this kernel lacks that mailguard does without, and what is lost (one line each;
    /// `kernel_features`).
    #[serde(default)]
    pub kernel_degraded: Vec<String>,
    /// Since when (Unix seconds) the XDP program is not on the interface, because the
    /// interface went away; `None` while it guards it.
    #[serde(default)]
    pub detached_since: Option<u64>,
    /// The bans from the mail logs, when `[bans]` is enabled.
    #[serde(default)]
    pub bans: Option<crate::daemon::bans::BanSummary>,
    /// The CrowdSec bouncer, when `[crowdsec]` is enabled.
    #[serde(default)]
    pub crowdsec: Option<crate::daemon::crowdsec::CrowdsecSummary>,
    /// SYN cookies from XDP (`budgets.syn_cookies`): what they are set to and what stands in
    /// their way, when they are on.
    #[serde(default)]
    pub syn_cookies: Option<SynCookieState>,
}

/// What `status` shows of the SYN cookies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SynCookieState {
    /// `under_flood` or `always`.
    pub mode: String,
    /// Whether the SYN-ACKs carry timestamps (`net.ipv4.tcp_timestamps` = 2).
    pub timestamps: bool,
    /// The value of `net.ipv4.tcp_syncookies` mailguard found and set back at unload, when it
    /// set it to 2.
    pub tcp_syncookies_was: Option<u32>,
    /// Why no cookie can be made, when one stands in the way (then SYNs over the ceiling are
    /// dropped as before).
    pub problem: Option<String>,
    /// `under_flood`: whether a flood is on (SYNs over the ceiling within `hold` seconds).
    #[serde(default)]
    pub flood: bool,
    /// `under_flood`: how long after the last SYN over the ceiling the flood is over, seconds.
    #[serde(default)]
    pub hold: u64,
    /// Whether the cookies are made from the SYN alone (Linux 6.0): the listeners are marked
    /// as sending cookies, and `net.ipv4.tcp_syncookies` keeps the operator's value.
    #[serde(default)]
    pub raw: bool,
    /// The ports whose listeners are marked now (with `raw`, while cookies are needed).
    #[serde(default)]
    pub marked: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a mailguard state file: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("mailguard is not running (no {})", path.display())]
    NotRunning { path: PathBuf },
    #[error("mailguard is already running as pid {pid} (see {})", path.display())]
    AlreadyRunning { pid: u32, path: PathBuf },
    #[error("pinned map {}: {source}", path.display())]
    Pinned {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    Mapped(#[from] crate::kernel::mapped::MappedError),
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid as i32, 0) == 0 };
    // A zombie has ended; only its parent has not collected its exit status yet.
    exists && !zombie(pid)
}

/// Whether `pid` is a zombie (state `Z` in /proc/PID/stat, after the command name's `)`).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = &stat[stat.rfind(')')? + 1..];
            after_name
                .split_whitespace()
                .next()
                .map(|state| state == "Z")
        })
        .unwrap_or(false)
}

impl RunState {
    /// The state of the running mailguard, or why there is none.
    pub fn read(dirs: &Dirs) -> Result<RunState, StateError> {
        let path = dirs.state_file();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotRunning { path });
            }
            Err(e) => return Err(io_error("read", &path)(e)),
        };
        let state: RunState =
            serde_json::from_str(&text).map_err(|source| StateError::Corrupt {
                path: path.clone(),
                source,
            })?;
        Ok(state)
    }

    /// Whether the daemon that wrote this state is still running.
    pub fn daemon_alive(&self) -> bool {
        process_alive(self.pid)
    }

    pub fn write(&self, dirs: &Dirs) -> Result<(), StateError> {
        fs::create_dir_all(&dirs.run).map_err(io_error("create", &dirs.run))?;
        let path = dirs.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serializes");
        fs::write(&tmp, text).map_err(io_error("write", &tmp))?;
        fs::rename(&tmp, &path).map_err(io_error("rename", &path))
    }
}

/// Held by the running daemon: an exclusive lock on `<run dir>/lock`, released when the process
/// ends, however it ends.
pub struct DaemonLock {
    _file: fs::File,
}

/// Takes the daemon lock, or says which daemon holds it.
pub fn lock(dirs: &Dirs) -> Result<DaemonLock, StateError> {
    use std::os::fd::AsRawFd;
    fs::create_dir_all(&dirs.run).map_err(io_error("create", &dirs.run))?;
    let path = dirs.run.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = RunState::read(dirs).map(|s| s.pid).unwrap_or(0);
        return Err(StateError::AlreadyRunning { pid, path });
    }
    Ok(DaemonLock { _file: file })
}

/// Removes the state file (after `unload`).
pub fn forget(dirs: &Dirs) -> Result<(), StateError> {
    // What the run changed in the kernel's settings goes back as it was.
    match crate::kernel::syncookie_sysctl::restore(&dirs.run) {
        Ok(crate::kernel::syncookie_sysctl::Change::Restored { to }) => {
            log::info!("net.ipv4.tcp_syncookies put back to {to}");
        }
        Ok(_) => {}
        Err(e) => log::error!("{e}"),
    }
    let state = dirs.state_file();
    match fs::remove_file(&state) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", &state)(e)),
    }
}

pub(crate) fn pinned(dirs: &Dirs, name: &'static str) -> Result<Map, StateError> {
    let path = crate::kernel::pins::Pins::new(&dirs.pin).map(name);
    let data = MapData::from_pin(&path).map_err(|source| StateError::Pinned {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| StateError::Pinned { path, source })
}

/// The counters of the running mailguard, read from its pinned map.
pub fn pinned_counters(dirs: &Dirs) -> Result<Counters, StateError> {
    let map = pinned(dirs, names::COUNTERS)?;
    let array: PerCpuArray<_, u64> =
        PerCpuArray::try_from(map).map_err(GuardError::map(names::COUNTERS))?;
    Ok(Counters::read(&array)?)
}

/// The settings in force, read from the pinned map.
pub fn pinned_settings(dirs: &Dirs) -> Result<Settings, StateError> {
    let map = pinned(dirs, names::SETTINGS)?;
    let array: Array<_, Settings> =
        Array::try_from(map).map_err(GuardError::map(names::SETTINGS))?;
    Ok(array.get(&0, 0).map_err(GuardError::map(names::SETTINGS))?)
}
