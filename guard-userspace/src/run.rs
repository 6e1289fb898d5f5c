//! `mailguard run`: load, configure and attach the programs through pinned links, then serve
//! until SIGINT or SIGTERM. SIGHUP re-reads the configuration. The links and maps stay pinned
//! when the daemon ends, however it ends: the host stays protected, and the next start adopts
//! them (replacing the programs atomically). `mailguard unload` removes the protection.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use crate::{
    config::{self, Config, ConfigError, Warning},
    control::{ControlServer, Request, Response, answer},
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
    /// Undo the start (unload) unless `mailguard confirm` arrives within this time.
    pub confirm_within: Option<Duration>,
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
    #[error("not confirmed in time: mailguard unloaded itself (the host is unprotected)")]
    RolledBack,
    #[error(transparent)]
    Pins(#[from] crate::pins::PinError),
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
        Ok((guard, config, state)) => {
            let facts = Arc::new(DaemonFacts::default());
            if let Some(listen) = config.metrics_listen {
                let cpus = crate::policy::HostFacts::of_this_host().map_or(1, |h| h.cpus);
                match metrics::serve(listen, opts.dirs.clone(), cpus, facts.clone()) {
                    Ok(()) => log::info!("Prometheus metrics on http://{listen}/metrics"),
                    // Monitoring is not protection: go on without it.
                    Err(e) => log::error!("metrics endpoint off: cannot listen on {listen}: {e}"),
                }
            }
            let mut daemon = Daemon {
                guard,
                opts: &opts,
                config,
                state,
                facts,
                pins: &pins,
                pending: None,
            };
            if let Some(within) = opts.confirm_within {
                log::warn!(
                    "unconfirmed: mailguard unloads itself in {within:?} unless `mailguard confirm` arrives"
                );
                daemon.pending = Some(Pending {
                    deadline: Instant::now() + within,
                    undo: Undo::Unload,
                });
            }
            daemon.serve(&signals)
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

/// What undoes an unconfirmed change.
enum Undo {
    /// Go back to this configuration (an unconfirmed reload).
    Restore(Box<Config>),
    /// Remove mailguard (an unconfirmed start).
    Unload,
}

struct Pending {
    deadline: Instant,
    undo: Undo,
}

/// The running daemon.
struct Daemon<'a> {
    guard: Guard,
    opts: &'a RunOptions,
    config: Config,
    state: RunState,
    facts: Arc<DaemonFacts>,
    pins: &'a Pins,
    pending: Option<Pending>,
}

impl Daemon<'_> {
    /// Serves until SIGINT or SIGTERM (the protection stays pinned until `mailguard unload`),
    /// or until an unconfirmed start runs out of time (then it unloads itself). Meanwhile:
    /// SIGHUP and `mailguard reload` re-read the configuration, `mailguard confirm` keeps a
    /// change, and an unconfirmed reload is rolled back on time.
    fn serve(&mut self, signals: &Signals) -> Result<(), RunError> {
        let control = match ControlServer::bind(&self.opts.dirs) {
            Ok(c) => Some(c),
            Err(e) => {
                log::error!("`mailguard reload` and `confirm` unavailable: {e}");
                None
            }
        };
        sd_notify("READY=1");
        loop {
            if let Some(sig) = signals.wait_timeout(Duration::from_millis(200))? {
                if sig == libc::SIGHUP {
                    sd_notify("RELOADING=1");
                    let _ = self.reload(None);
                    sd_notify("READY=1");
                } else {
                    sd_notify("STOPPING=1");
                    log::info!(
                        "signal {sig}: exiting; {} stays protected (`mailguard unload` removes the protection)",
                        self.state.interface
                    );
                    return Ok(());
                }
            }
            while let Some((request, stream)) = control.as_ref().and_then(ControlServer::next) {
                let response = match request {
                    Ok(Request::Reload { confirm_within }) => {
                        sd_notify("RELOADING=1");
                        let r = self.reload(confirm_within.map(Duration::from_secs));
                        sd_notify("READY=1");
                        match r {
                            Ok(message) => Response { ok: true, message },
                            Err(message) => Response { ok: false, message },
                        }
                    }
                    Ok(Request::Confirm) => match self.pending.take() {
                        Some(_) => {
                            log::info!("change confirmed");
                            Response {
                                ok: true,
                                message: "confirmed: the change stays".into(),
                            }
                        }
                        None => Response {
                            ok: false,
                            message: "nothing is waiting for confirmation".into(),
                        },
                    },
                    Err(message) => Response { ok: false, message },
                };
                if let Err(e) = answer(&stream, &response) {
                    log::warn!("control socket: {e}");
                }
            }
            if self
                .pending
                .as_ref()
                .is_some_and(|p| Instant::now() >= p.deadline)
            {
                let pending = self.pending.take().expect("checked");
                match pending.undo {
                    Undo::Restore(previous) => {
                        log::warn!(
                            "reload not confirmed in time: rolling back to the previous configuration"
                        );
                        let current = std::mem::replace(&mut self.config, *previous);
                        self.guard
                            .policy_maps()?
                            .apply(Some(&current), &self.config)?;
                        self.facts.rollbacks.fetch_add(1, Ordering::Relaxed);
                        self.state.monitor = self.config.monitor;
                        self.state.write(&self.opts.dirs)?;
                    }
                    Undo::Unload => {
                        log::warn!("start not confirmed in time: unloading mailguard");
                        sd_notify("STOPPING=1");
                        self.pins.remove_all()?;
                        state::forget(&self.opts.dirs)?;
                        return Err(RunError::RolledBack);
                    }
                }
            }
        }
    }

    /// Re-reads the configuration. A bad file is refused (the configuration in force stays)
    /// and the answer says why. With `confirm_within`, the change is rolled back unless
    /// confirmed in time.
    fn reload(&mut self, confirm_within: Option<Duration>) -> Result<String, String> {
        let new = match effective_config(self.opts) {
            Ok((new, warnings)) => {
                for w in &warnings {
                    log::warn!("{w}");
                }
                new
            }
            Err(e) => {
                log::error!("reload refused, the configuration in force stays: {e}");
                self.facts.reloads_failed.fetch_add(1, Ordering::Relaxed);
                return Err(format!("refused, the configuration in force stays: {e}"));
            }
        };
        let old = &self.config;
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
        let mut notes = Vec::new();
        for (key, changed) in restart_only {
            if changed {
                log::warn!("{key} changes take effect at the next start; applying the rest");
                notes.push(format!("{key} waits for the next start"));
            }
        }
        let mut applied = new;
        applied.interface = old.interface.clone();
        applied.attach_mode = old.attach_mode;
        applied.budgets.tracked_sources = old.budgets.tracked_sources;
        applied.budgets.tracked_connections = old.budgets.tracked_connections;
        applied.metrics_listen = old.metrics_listen;
        let result = self
            .guard
            .policy_maps()
            .and_then(|mut maps| maps.apply(Some(old), &applied));
        if let Err(e) = result {
            log::error!("reload failed while writing the maps: {e}");
            self.facts.reloads_failed.fetch_add(1, Ordering::Relaxed);
            return Err(format!("failed while writing the maps: {e}"));
        }
        let previous = std::mem::replace(&mut self.config, applied);
        self.state.monitor = self.config.monitor;
        if let Err(e) = self.state.write(&self.opts.dirs) {
            log::warn!("{e}");
        }
        self.facts.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let mut message = "configuration reloaded".to_string();
        if let Some(within) = confirm_within {
            // Several unconfirmed reloads roll back to the last confirmed configuration.
            let undo = match self.pending.take() {
                Some(Pending { undo, .. }) => undo,
                None => Undo::Restore(Box::new(previous)),
            };
            self.pending = Some(Pending {
                deadline: Instant::now() + within,
                undo,
            });
            message.push_str(&format!(
                "; rolled back in {}s unless `mailguard confirm` arrives",
                within.as_secs()
            ));
        }
        if !notes.is_empty() {
            message.push_str(&format!(" ({})", notes.join(", ")));
        }
        log::info!("{message}");
        Ok(message)
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state, when started by it.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        log::warn!("sd_notify {state}: {e}");
    }
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

    /// The next blocked signal, or `None` after `timeout`.
    fn wait_timeout(&self, timeout: Duration) -> Result<Option<i32>, RunError> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: waits for one of the blocked signals in `set`, at most `ts`.
        let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        if sig >= 0 {
            return Ok(Some(sig));
        }
        match std::io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::EAGAIN)
                || e.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(None)
            }
            e => Err(RunError::Signals(e)),
        }
    }
}
