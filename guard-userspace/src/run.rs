//! `mailguard run`: load, configure and attach the XDP program, then stay in the foreground
//! until SIGINT or SIGTERM, when it detaches and cleans up. SIGHUP re-reads the configuration.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    config::{self, Config, ConfigError, Warning},
    guard::{AttachMode, Guard, GuardError},
    state::{self, Dirs, RunState, StateError},
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub iface: Option<String>,
    pub config: Option<PathBuf>,
    pub mode: Option<AttachMode>,
    pub monitor: bool,
    pub dirs: Dirs,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("no interface to attach to: give --iface or set `interface` in the configuration")]
    NoInterface,
    #[error("--iface: {0}")]
    BadInterface(String),
    #[error(transparent)]
    Guard(#[from] GuardError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot wait for signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// The configuration file to use: `--config`, else the default path when it exists.
fn config_path(explicit: &Option<PathBuf>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.clone()),
        None => {
            let p = PathBuf::from(config::DEFAULT_PATH);
            p.exists().then_some(p)
        }
    }
}

/// Reads the configuration and applies the command-line overrides.
pub fn effective_config(opts: &RunOptions) -> Result<(Config, Vec<Warning>), RunError> {
    let (mut config, _) = match config_path(&opts.config) {
        Some(path) => Config::load(&path)?,
        None => {
            log::info!(
                "no {} and no --config: using the built-in defaults",
                config::DEFAULT_PATH
            );
            (Config::default(), Vec::new())
        }
    };
    if let Some(iface) = &opts.iface {
        config::validate_interface_name(iface).map_err(RunError::BadInterface)?;
        config.interface = Some(iface.clone());
    }
    if let Some(mode) = opts.mode {
        config.attach_mode = mode;
    }
    if opts.monitor {
        config.monitor = true;
    }
    let warnings = config.warnings();
    Ok((config, warnings))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(opts: RunOptions) -> Result<(), RunError> {
    // Block the signals first: one that arrives during set-up is handled once attached,
    // through the same clean path.
    let signals = Signals::block()?;
    let (config, warnings) = effective_config(&opts)?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let iface = config.interface.clone().ok_or(RunError::NoInterface)?;

    state::claim(&opts.dirs)?;
    // From here on, whatever happens, the pins and the state file go when we do.
    let result = Guard::load(&config.budgets)
        .map_err(RunError::from)
        .and_then(|mut guard| {
            guard.policy_maps()?.apply(None, &config)?;
            guard.pin_maps(&opts.dirs.pin)?;
            let result = attached(&mut guard, &opts, config, &iface, &signals);
            drop(guard);
            log::info!("detached from {iface}");
            result
        });
    let released = state::release(&opts.dirs);
    result.and(released.map_err(RunError::from))
}

fn attached(
    guard: &mut Guard,
    opts: &RunOptions,
    mut config: Config,
    iface: &str,
    signals: &Signals,
) -> Result<(), RunError> {
    let mode = guard.attach(iface, config.attach_mode)?;
    match guard.attach_sockops() {
        Ok(cgroup) => log::info!(
            "counting connections to mail ports from cgroup {}",
            cgroup.display()
        ),
        // Without counts the caps cannot bite: keep protecting with everything else.
        Err(e) => log::error!("connection caps are NOT enforced: {e}"),
    }
    let verified = guard.verified_instructions()?;
    let state = RunState {
        pid: std::process::id(),
        interface: iface.to_string(),
        mode: mode.name().to_string(),
        monitor: config.monitor,
        config: config_path(&opts.config),
        program_id: guard.program_id()?,
        verified_instructions: verified,
        started: now(),
    };
    state.write(&opts.dirs)?;
    log::info!(
        "attached to {iface} in {} mode ({}), program id {}, {} instructions verified",
        mode.name(),
        if config.monitor {
            "monitor: counting only"
        } else {
            "enforcing"
        },
        state.program_id,
        verified.map_or("?".to_string(), |n| n.to_string()),
    );
    loop {
        match signals.wait()? {
            libc::SIGHUP => {
                config = reload(guard, opts, config, &state)?;
            }
            sig => {
                log::info!("signal {sig}: detaching");
                return Ok(());
            }
        }
    }
}

/// Re-reads the configuration; a bad file is refused and the configuration in force stays.
fn reload(
    guard: &mut Guard,
    opts: &RunOptions,
    old: Config,
    state: &RunState,
) -> Result<Config, RunError> {
    let new = match effective_config(opts) {
        Ok((new, warnings)) => {
            for w in &warnings {
                log::warn!("{w}");
            }
            new
        }
        Err(e) => {
            log::error!("reload refused, the configuration in force stays: {e}");
            return Ok(old);
        }
    };
    if new.interface != old.interface || new.attach_mode != old.attach_mode {
        log::warn!(
            "interface and attach_mode changes take effect at the next start; applying the rest"
        );
    }
    let applied = Config {
        interface: old.interface.clone(),
        attach_mode: old.attach_mode,
        ..new
    };
    guard.policy_maps()?.apply(Some(&old), &applied)?;
    let mut state = state.clone();
    state.monitor = applied.monitor;
    state.write(&opts.dirs)?;
    log::info!("configuration reloaded");
    Ok(applied)
}

/// SIGINT, SIGTERM and SIGHUP, blocked and received synchronously with sigwait.
struct Signals {
    set: libc::sigset_t,
}

impl Signals {
    fn block() -> Result<Signals, RunError> {
        // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only changes
        // this thread's mask (set before any other thread exists).
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, sig);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(RunError::Signals(std::io::Error::from_raw_os_error(rc)));
            }
            Ok(Signals { set })
        }
    }

    fn wait(&self) -> Result<i32, RunError> {
        let mut sig = 0;
        // SAFETY: waits for one of the blocked signals in `set`.
        let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
        if rc != 0 {
            return Err(RunError::Signals(std::io::Error::from_raw_os_error(rc)));
        }
        Ok(sig)
    }
}
