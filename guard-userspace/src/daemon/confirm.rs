//! The confirm window (`run --confirm-within`, `reload --confirm-within`), kept outside the
//! daemon's process so that it holds when the daemon dies inside it (SIGKILL, OOM, a crash).
//!
//! Why a watchdog process and not the kernel: rolling back a reload means writing the previous
//! policy (ports, lists, budgets) into the maps, and a second generation of every map for the
//! XDP program to fall back to past a deadline would double the maps and slow every packet.
//! Instead, when a window opens, the daemon writes what is on trial into `pending.json` in the
//! run directory (with the last confirmed configuration file beside it, `confirmed.toml`) and
//! starts `mailguard confirm-watch`, a process of its own (its own session: stopping the
//! service, which ends only the daemon, does not end it). The watchdog sleeps until the deadline;
//! unless the change was confirmed (the file is gone) or the daemon rolled it back itself, it
//! undoes it: the previous configuration written into the pinned maps, or, for a start, the
//! protection unloaded. A daemon that is alive at the deadline does its own rollback; the
//! watchdog steps in only for a dead one (or one that has not acted 5 s past the deadline).
//!
//! A later start reads `pending.json` too: the configuration file still holding the change that
//! was never confirmed is not applied silently. After a reload's window, mailguard starts with
//! the last confirmed configuration and says so; after a start's window, it refuses to start
//! with that file unless `--confirm-within` tries it again.

use std::{
    fs, io,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::daemon::state::Dirs;

/// What undoes an unconfirmed change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UndoKind {
    /// Back to `confirmed.toml` (an unconfirmed reload).
    Restore,
    /// Remove mailguard (an unconfirmed start).
    Unload,
}

/// A change on trial, as `pending.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Tells this window from a later one (the watchdog of an earlier window then stops).
    pub token: u64,
    /// Unix time in milliseconds.
    pub deadline_ms: u64,
    pub undo: UndoKind,
    /// The daemon that opened the window.
    pub daemon: u32,
    /// The configuration file on trial and its text (`None`: the built-in defaults).
    pub config_path: Option<PathBuf>,
    pub unconfirmed: Option<String>,
    /// Set once rolled back (by the daemon or the watchdog).
    pub rolled_back: bool,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn pending_path(dirs: &Dirs) -> PathBuf {
    dirs.run.join("pending.json")
}

/// Where the last confirmed configuration file's text is kept while a reload is on trial.
pub fn confirmed_path(dirs: &Dirs) -> PathBuf {
    dirs.run.join("confirmed.toml")
}

impl Pending {
    pub fn read(dirs: &Dirs) -> Option<Pending> {
        let text = fs::read_to_string(pending_path(dirs)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes the record (atomically: a reader sees the old one or the new one).
    pub fn write(&self, dirs: &Dirs) -> io::Result<()> {
        fs::create_dir_all(&dirs.run)?;
        let path = pending_path(dirs);
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_string_pretty(self).expect("serializes"),
        )?;
        fs::rename(&tmp, &path)
    }
}

/// Opens a window: records it (with the confirmed configuration's text, for a reload) and
/// starts the watchdog. Returns the token.
pub fn arm(
    dirs: &Dirs,
    within: Duration,
    undo: UndoKind,
    config_path: Option<PathBuf>,
    unconfirmed: Option<String>,
    confirmed: Option<&str>,
) -> io::Result<u64> {
    if let Some(text) = confirmed {
        fs::write(confirmed_path(dirs), text)?;
    }
    let token = now_ms() ^ ((std::process::id() as u64) << 40);
    Pending {
        token,
        deadline_ms: now_ms() + within.as_millis() as u64,
        undo,
        daemon: std::process::id(),
        config_path,
        unconfirmed,
        rolled_back: false,
    }
    .write(dirs)?;
    spawn_watchdog(dirs, token)?;
    Ok(token)
}

/// The change was confirmed: no rollback.
pub fn disarm(dirs: &Dirs) {
    let _ = fs::remove_file(pending_path(dirs));
    let _ = fs::remove_file(confirmed_path(dirs));
}

/// The daemon rolled the change back itself.
pub fn mark_rolled_back(dirs: &Dirs) {
    if let Some(mut p) = Pending::read(dirs) {
        p.rolled_back = true;
        let _ = p.write(dirs);
    }
}

/// Starts `mailguard confirm-watch` in a session of its own.
fn spawn_watchdog(dirs: &Dirs, token: u64) -> io::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--pin-dir")
        .arg(&dirs.pin)
        .arg("--run-dir")
        .arg(&dirs.run)
        .arg("confirm-watch")
        .arg("--token")
        .arg(token.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    // SAFETY: setsid in the child before exec; it only changes the child's session.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().map(|_| ())
}

/// What the watchdog should do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Watch {
    /// Nothing yet: look again in a moment.
    Wait,
    /// The window is over: confirmed, rolled back, or replaced by another one.
    Done,
    /// Undo the change now.
    Undo(UndoKind),
}

/// The watchdog's decision for window `token`, at `now_ms`, with the daemon alive or not.
pub fn decide(pending: Option<&Pending>, token: u64, now_ms: u64, daemon_alive: bool) -> Watch {
    let Some(p) = pending.filter(|p| p.token == token && !p.rolled_back) else {
        return Watch::Done;
    };
    if now_ms < p.deadline_ms {
        return Watch::Wait;
    }
    // A live daemon rolls back itself; one that has not 5 s on is taken as hung.
    if daemon_alive && now_ms < p.deadline_ms + 5_000 {
        return Watch::Wait;
    }
    Watch::Undo(p.undo)
}

/// What a start does with the configuration file's text `text`, given a record of a window.
#[derive(Debug, PartialEq, Eq)]
pub enum AtStart {
    /// No window concerns this file: go on (a stale record is removed).
    Proceed,
    /// The file holds a reload never confirmed: start with this confirmed text instead.
    UseConfirmed(String),
    /// The file holds a start never confirmed: refuse.
    Refuse,
}

pub fn at_start(dirs: &Dirs, text: Option<&str>, trying_again: bool) -> AtStart {
    let Some(p) = Pending::read(dirs) else {
        return AtStart::Proceed;
    };
    let same_file = p.unconfirmed.as_deref() == text;
    if !same_file || trying_again {
        disarm(dirs);
        return AtStart::Proceed;
    }
    match p.undo {
        UndoKind::Restore => match fs::read_to_string(confirmed_path(dirs)) {
            Ok(confirmed) => AtStart::UseConfirmed(confirmed),
            Err(_) => AtStart::Proceed,
        },
        UndoKind::Unload => AtStart::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(token: u64, deadline_ms: u64) -> Pending {
        Pending {
            token,
            deadline_ms,
            undo: UndoKind::Restore,
            daemon: 1,
            config_path: None,
            unconfirmed: Some("monitor = true\n".into()),
            rolled_back: false,
        }
    }

    #[test]
    fn the_watchdog_acts_for_a_dead_daemon_at_the_deadline_only() {
        let p = pending(7, 10_000);
        assert_eq!(decide(Some(&p), 7, 9_999, false), Watch::Wait);
        assert_eq!(
            decide(Some(&p), 7, 10_000, false),
            Watch::Undo(UndoKind::Restore)
        );
        // A live daemon does it itself, unless it is hung.
        assert_eq!(decide(Some(&p), 7, 10_000, true), Watch::Wait);
        assert_eq!(
            decide(Some(&p), 7, 15_000, true),
            Watch::Undo(UndoKind::Restore)
        );
        // Confirmed (no record), replaced, or rolled back: done.
        assert_eq!(decide(None, 7, 10_000, false), Watch::Done);
        assert_eq!(decide(Some(&p), 8, 10_000, false), Watch::Done);
        let done = Pending {
            rolled_back: true,
            ..p
        };
        assert_eq!(decide(Some(&done), 7, 10_000, false), Watch::Done);
    }

    #[test]
    fn a_start_does_not_reapply_an_unconfirmed_file() {
        let dirs = Dirs {
            pin: PathBuf::from("/nonexistent"),
            run: std::env::temp_dir().join(format!("mailguard-confirm-{}", std::process::id())),
        };
        fs::create_dir_all(&dirs.run).unwrap();
        pending(1, 0).write(&dirs).unwrap();
        fs::write(confirmed_path(&dirs), "icmp_echo = \"drop\"\n").unwrap();
        assert_eq!(
            at_start(&dirs, Some("monitor = true\n"), false),
            AtStart::UseConfirmed("icmp_echo = \"drop\"\n".into())
        );
        // Another file: the record is stale and goes.
        assert_eq!(
            at_start(&dirs, Some("other = 1\n"), false),
            AtStart::Proceed
        );
        assert!(Pending::read(&dirs).is_none());
        let unload = Pending {
            undo: UndoKind::Unload,
            ..pending(2, 0)
        };
        unload.write(&dirs).unwrap();
        assert_eq!(
            at_start(&dirs, Some("monitor = true\n"), false),
            AtStart::Refuse
        );
        // Trying it again, on purpose: allowed.
        assert_eq!(
            at_start(&dirs, Some("monitor = true\n"), true),
            AtStart::Proceed
        );
        fs::remove_dir_all(&dirs.run).unwrap();
    }
}
