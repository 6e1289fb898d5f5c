//! `mailguard run`: load, configure and attach the programs through pinned links, then serve
//! until SIGINT or SIGTERM. SIGHUP re-reads the configuration. The links and maps stay pinned
//! when the daemon ends, however it ends: the host stays protected, and the next start adopts
//! them (replacing the programs atomically). `mailguard unload` removes the protection.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use std::sync::Arc;

use crate::{
    config::{self, Config, ConfigError, Warning},
    guard::{AttachMode, Attachment, Guard, GuardError},
    metrics::{self, DaemonFacts},
    pins::Pins,
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
    #[error("cannot unpin {}: {source}", path.display())]
    Unpin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    // Block the signals first: one that arrives during set-up is handled once attached.
    let signals = Signals::block()?;
    let (config, warnings) = effective_config(&opts)?;
    for w in &warnings {
        log::warn!("{w}");
    }
    let iface = config.interface.clone().ok_or(RunError::NoInterface)?;

    let _lock = state::lock(&opts.dirs)?;
    let pins = Pins::new(&opts.dirs.pin);
    let previous = RunState::read(&opts.dirs).ok();
    let moved = previous.as_ref().filter(|p| p.interface != iface);
    if let Some(prev) = moved.filter(|_| pins.attached()) {
        // The protection moves: the old interface's attachment goes.
        log::warn!("moving protection from {} to {iface}", prev.interface);
        std::fs::remove_file(pins.xdp_link()).map_err(|source| RunError::Unpin {
            path: pins.xdp_link(),
            source,
        })?;
    }
    let adopting = pins.attached();
    match start(&opts, config, &iface, &pins, previous.as_ref(), adopting) {
        Ok((mut guard, config, state)) => {
            let facts = Arc::new(DaemonFacts::default());
            if let Some(listen) = config.metrics_listen {
                let cpus = crate::policy::HostFacts::of_this_host().map_or(1, |h| h.cpus);
                match metrics::serve(listen, opts.dirs.clone(), cpus, facts.clone()) {
                    Ok(()) => log::info!("Prometheus metrics on http://{listen}/metrics"),
                    // Monitoring is not protection: go on without it.
                    Err(e) => log::error!("metrics endpoint off: cannot listen on {listen}: {e}"),
                }
            }
            serve(&mut guard, &opts, config, &state, &signals, &facts)
        }
        Err(e) => {
            if !adopting {
                // A first start that failed leaves nothing pinned behind.
                if let Err(cleanup) = pins.remove_all() {
                    log::error!("{cleanup}");
                }
            }
            Err(e)
        }
    }
}

/// Loads (reusing pinned maps), configures, and attaches (or replaces) both programs.
fn start(
    opts: &RunOptions,
    config: Config,
    iface: &str,
    pins: &Pins,
    previous: Option<&RunState>,
    adopting: bool,
) -> Result<(Guard, Config, RunState), RunError> {
    let (mut guard, recreated) = Guard::load_pinned(&config.budgets, pins)?;
    for r in &recreated {
        log::warn!("{r}");
    }
    {
        let mut maps = guard.policy_maps()?;
        let current = maps.read_contents()?;
        maps.apply_over(&current, &config)?;
    }
    let mode = match guard.attach_xdp_pinned(iface, config.attach_mode, pins)? {
        Attachment::New(mode) => {
            log::info!("attached to {iface} in {} mode", mode.name());
            mode.name().to_string()
        }
        Attachment::Replaced => {
            log::info!("replaced the program attached to {iface} (no gap in protection)");
            previous.map_or("unknown".to_string(), |p| p.mode.clone())
        }
    };
    match guard.attach_sockops_pinned(pins) {
        Ok(Attachment::New(_)) => {
            log::info!("counting connections to mail ports (sock_ops on the cgroup v2 root)")
        }
        Ok(Attachment::Replaced) => {
            log::info!("replaced the connection-counting program (counts kept)")
        }
        // Without counts the caps cannot bite: keep protecting with everything else.
        Err(e) => log::error!("connection caps are NOT enforced: {e}"),
    }
    let verified = guard.verified_instructions()?;
    let state = RunState {
        pid: std::process::id(),
        interface: iface.to_string(),
        mode,
        monitor: config.monitor,
        config: config_path(&opts.config),
        program_id: guard.program_id()?,
        verified_instructions: verified,
        started: now(),
    };
    state.write(&opts.dirs)?;
    log::info!(
        "{} {iface} ({}), program id {}, {} instructions verified",
        if adopting { "guarding" } else { "now guarding" },
        if config.monitor {
            "monitor: counting only"
        } else {
            "enforcing"
        },
        state.program_id,
        verified.map_or("?".to_string(), |n| n.to_string()),
    );
    Ok((guard, config, state))
}

/// Waits for signals: SIGHUP reloads; SIGINT and SIGTERM end the daemon, and the protection
/// stays (pinned) until `mailguard unload`.
fn serve(
    guard: &mut Guard,
    opts: &RunOptions,
    mut config: Config,
    state: &RunState,
    signals: &Signals,
    facts: &DaemonFacts,
) -> Result<(), RunError> {
    loop {
        match signals.wait()? {
            libc::SIGHUP => {
                let (next, applied) = reload(guard, opts, config, state)?;
                config = next;
                let counter = if applied {
                    &facts.reloads_ok
                } else {
                    &facts.reloads_failed
                };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            sig => {
                log::info!(
                    "signal {sig}: exiting; {} stays protected (`mailguard unload` removes the protection)",
                    state.interface
                );
                return Ok(());
            }
        }
    }
}

/// Re-reads the configuration; a bad file is refused and the configuration in force stays.
/// Returns the configuration in force, and whether the new one was applied.
fn reload(
    guard: &mut Guard,
    opts: &RunOptions,
    old: Config,
    state: &RunState,
) -> Result<(Config, bool), RunError> {
    let new = match effective_config(opts) {
        Ok((new, warnings)) => {
            for w in &warnings {
                log::warn!("{w}");
            }
            new
        }
        Err(e) => {
            log::error!("reload refused, the configuration in force stays: {e}");
            return Ok((old, false));
        }
    };
    let restart_only = [
        ("interface", new.interface != old.interface),
        ("attach_mode", new.attach_mode != old.attach_mode),
        (
            "budgets.tracked_sources",
            new.budgets.tracked_sources != old.budgets.tracked_sources,
        ),
        (
            "budgets.tracked_connections",
            new.budgets.tracked_connections != old.budgets.tracked_connections,
        ),
        ("metrics.listen", new.metrics_listen != old.metrics_listen),
    ];
    for (key, changed) in restart_only {
        if changed {
            log::warn!("{key} changes take effect at the next start; applying the rest");
        }
    }
    let mut applied = new;
    applied.interface = old.interface.clone();
    applied.attach_mode = old.attach_mode;
    applied.budgets.tracked_sources = old.budgets.tracked_sources;
    applied.budgets.tracked_connections = old.budgets.tracked_connections;
    applied.metrics_listen = old.metrics_listen;
    guard.policy_maps()?.apply(Some(&old), &applied)?;
    let mut state = state.clone();
    state.monitor = applied.monitor;
    state.write(&opts.dirs)?;
    log::info!("configuration reloaded");
    Ok((applied, true))
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
