//! `net.ipv4.tcp_syncookies` while XDP answers SYNs with cookies (`budgets.syn_cookies`).
//! Whatever mailguard sets it to, it puts back the value it found when cookies are no longer
//! needed and at `unload`. That value is kept in the run directory, so that a daemon killed and
//! started again, or `unload` without a daemon, still knows it.
//!
//! - Kernels with `bpf_tcp_raw_gen_syncookie_*` (Linux 6.0): the setting stays as the operator
//!   has it, but for 0 (the kernel would then refuse every cookie ACK), which is 1 while cookies
//!   are needed; it is 2 only for the instant of marking the listeners (`listener_marks`).
//! - Older kernels make a cookie for mailguard (`bpf_tcp_gen_syncookie`) only when the setting
//!   is 2 (cookies always) or the listener's SYN queue is full, so mailguard sets it to 2 while
//!   cookies are on (`always`) or a flood lasts (`under_flood`: `daemon::flood_watch`).
//!
//! What 2 costs: the SYNs that reach the kernel (from sources XDP already knows, and every SYN
//! to ports mailguard does not answer) are answered with the kernel's own cookies instead of
//! going through its SYN queue, for every listener of the namespace. A lost SYN-ACK is then not
//! sent again by the server (the client's SYN retransmission recovers it), and a connection gets
//! window scaling and SACK only when the client sends timestamps (the kernel keeps them in the
//! timestamp, as mailguard does).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

const SETTING: &str = "/proc/sys/net/ipv4/tcp_syncookies";
const SAVED: &str = "tcp_syncookies.before";

#[derive(Debug, thiserror::Error)]
pub enum SysctlError {
    #[error("cannot read {SETTING}: {0} (a kernel without CONFIG_SYN_COOKIES has none)")]
    Read(io::Error),
    #[error("cannot set {SETTING} to {value}: {source}")]
    Write { value: u32, source: io::Error },
    #[error("cannot keep the previous value of {SETTING} in {}: {source}", path.display())]
    Saved { path: PathBuf, source: io::Error },
}

/// The setting now.
pub fn current() -> Result<u32, SysctlError> {
    let text = fs::read_to_string(SETTING).map_err(SysctlError::Read)?;
    text.trim().parse().map_err(|_| {
        SysctlError::Read(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("`{}` is not a number", text.trim()),
        ))
    })
}

fn set(value: u32) -> Result<(), SysctlError> {
    fs::write(SETTING, format!("{value}\n")).map_err(|source| SysctlError::Write { value, source })
}

/// What `enable` and `restore` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Nothing to do.
    None,
    /// Set to mailguard's value; the value it had.
    Enabled { was: u32 },
    /// Put back to the value mailguard found.
    Restored { to: u32 },
}

/// Sets the setting to 2, keeping the value it had in `run_dir` (only the first time: after a
/// restart the kept value is the operator's, not mailguard's 2).
pub fn enable(run_dir: &Path) -> Result<Change, SysctlError> {
    hold(run_dir, 2)
}

/// Sets the setting to `value`, keeping the value it had in `run_dir` (only the first time, as
/// `enable`); when `value` is the kept one, puts it back as `restore` does.
pub fn hold(run_dir: &Path, value: u32) -> Result<Change, SysctlError> {
    if kept(run_dir) == Some(value) {
        return restore(run_dir);
    }
    let now = current()?;
    if now == value {
        return Ok(Change::None);
    }
    let saved = run_dir.join(SAVED);
    if !saved.exists() {
        fs::create_dir_all(run_dir)
            .and_then(|()| fs::write(&saved, format!("{now}\n")))
            .map_err(|source| SysctlError::Saved {
                path: saved.clone(),
                source,
            })?;
    }
    set(value)?;
    Ok(Change::Enabled { was: now })
}

/// Puts back the value kept by `enable`, if any, and forgets it.
pub fn restore(run_dir: &Path) -> Result<Change, SysctlError> {
    let saved = run_dir.join(SAVED);
    let Ok(text) = fs::read_to_string(&saved) else {
        return Ok(Change::None);
    };
    let to: u32 = text.trim().parse().unwrap_or(1);
    if current()? != to {
        set(to)?;
    }
    fs::remove_file(&saved).map_err(|source| SysctlError::Saved {
        path: saved.clone(),
        source,
    })?;
    Ok(Change::Restored { to })
}

/// The value kept by `enable` (what the operator had), if mailguard changed the setting.
pub fn kept(run_dir: &Path) -> Option<u32> {
    fs::read_to_string(run_dir.join(SAVED))
        .ok()
        .and_then(|t| t.trim().parse().ok())
}
