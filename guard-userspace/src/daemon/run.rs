//! `mailguard run`: load, configure and attach the programs through pinned links, then serve
//! until SIGINT or SIGTERM. SIGHUP re-reads the configuration. The links and maps stay pinned
//! when the daemon ends, however it ends: the host stays protected, and the next start adopts
//! them (replacing the programs atomically). `mailguard unload` removes the protection.

use std::{
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::serve::{Daemon, Pending, Undo};
use crate::{
    config::AttachMode,
    config::{self, Config, ConfigError, Warning},
    daemon::bans::BanKeeper,
    daemon::confirm::{self, AtStart, UndoKind},
    daemon::crowdsec::CrowdsecKeeper,
    daemon::lockout,
    daemon::metrics::{self, DaemonFacts},
    daemon::signals::Signals,
    daemon::state::{self, Dirs, RunState, StateError},
    feeds::keeper::ListKeeper,
    kernel::attach::Attachment,
    kernel::features::KernelFeatures,
    kernel::guard::{Guard, GuardError},
    kernel::link_watch::LinkWatch,
    kernel::pins::Pins,
    kernel::policy::Contents,
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub iface: Option<String>,
    pub config: Option<PathBuf>,
    pub mode: Option<AttachMode>,
    pub monitor: bool,
    /// Undo the start (unload) unless `mailguard confirm` arrives within this time.
    pub confirm_within: Option<Duration>,
    /// Start even if the configuration would cut a live session or block every source.
    pub force: bool,
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
    #[error(
        "interface `{iface}` does not exist here (`ip link` lists the interfaces): nothing was \
         changed{}",
        in_force.as_ref().map_or(String::new(), |i| format!("; the protection in force on {i} stays"))
    )]
    NoSuchInterface {
        iface: String,
        in_force: Option<String>,
    },
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
    #[error("{0}")]
    LockOut(String),
    #[error("the start failed, and the protection in force on {on} stays as it was")]
    Kept {
        on: String,
        #[source]
        source: Box<RunError>,
    },
    #[error(
        "{} holds a start that was never confirmed (its confirm window ran out and mailguard \
         unloaded itself): refused; `mailguard run --confirm-within SECONDS` tries it again",
        .0.display()
    )]
    Unconfirmed(PathBuf),
    #[error("not confirmed in time: mailguard unloaded itself (the host is unprotected)")]
    RolledBack,
    #[error(transparent)]
    Pins(#[from] crate::kernel::pins::PinError),
    #[error("cannot wait for signals: {0}")]
    Signals(#[source] std::io::Error),
}

impl RunError {
    /// Whether the start was refused for its configuration or arguments (exit code 2: systemd
    /// does not restart it in a loop).
    pub fn refused_input(&self) -> bool {
        match self {
            RunError::Config(_)
            | RunError::NoInterface
            | RunError::BadInterface(_)
            | RunError::LockOut(_)
            | RunError::Unconfirmed(_) => true,
            RunError::Kept { source, .. } => source.refused_input(),
            _ => false,
        }
    }
}

/// The configuration file to use: `--config`, else the default path when it exists.
pub(super) fn config_path(explicit: &Option<PathBuf>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.clone()),
        None => {
            let p = PathBuf::from(config::DEFAULT_PATH);
            p.exists().then_some(p)
        }
    }
}

/// Reads the configuration and applies the command-line overrides; with the file's text
/// (`None`: the built-in defaults).
pub fn effective_config(
    opts: &RunOptions,
) -> Result<(Config, Vec<Warning>, Option<String>), RunError> {
    let (config, text) = match config_path(&opts.config) {
        Some(path) => {
            let (config, _, text) = Config::load_with_text(&path)?;
            (config, Some(text))
        }
        None => {
            log::info!(
                "no {} and no --config: using the built-in defaults",
                config::DEFAULT_PATH
            );
            (Config::default(), None)
        }
    };
    let (config, warnings) = with_overrides(opts, config)?;
    Ok((config, warnings, text))
}

/// `config` with the command line's overrides (`--iface`, `--mode`, `--monitor`), and its
/// warnings.
pub(super) fn with_overrides(
    opts: &RunOptions,
    mut config: Config,
) -> Result<(Config, Vec<Warning>), RunError> {
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

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn run(opts: RunOptions) -> Result<(), RunError> {
    // Block the signals first: one that arrives during set-up is handled once attached.
    let signals = Signals::block().map_err(RunError::Signals)?;
    let (mut config, mut warnings, mut text) = effective_config(&opts)?;
    // A file still holding a change whose confirm window ran out is not applied silently.
    match confirm::at_start(&opts.dirs, text.as_deref(), opts.confirm_within.is_some()) {
        AtStart::Proceed => {}
        AtStart::Refuse => {
            return Err(RunError::Unconfirmed(
                config_path(&opts.config).unwrap_or_default(),
            ));
        }
        AtStart::UseConfirmed(confirmed) => {
            let (c, _) = Config::parse(
                &confirmed,
                &confirm::confirmed_path(&opts.dirs).display().to_string(),
            )?;
            (config, warnings) = with_overrides(&opts, c)?;
            log::warn!(
                "{} holds a change that was never confirmed (its confirm window ran out): starting \
                 with the last confirmed configuration instead; `mailguard reload` applies the \
                 file when you mean it",
                config_path(&opts.config).unwrap_or_default().display()
            );
            text = Some(confirmed);
        }
    }
    for w in &warnings {
        log::warn!("{w}");
    }
    let iface = config.interface.clone().ok_or(RunError::NoInterface)?;
    // Before anything is touched: a kernel mailguard cannot work on is refused here.
    let kernel = KernelFeatures::probed();
    kernel.check().map_err(GuardError::from)?;
    for lost in &kernel.degraded {
        log::warn!("this kernel (Linux {}) has {lost}", kernel.release);
    }

    let pins = Pins::new(&opts.dirs.pin);
    let previous = RunState::read(&opts.dirs).ok();
    // A typo or a renamed NIC: refused before anything is touched.
    if crate::kernel::attach::interface_index(&iface).is_err() {
        return Err(RunError::NoSuchInterface {
            iface,
            in_force: previous.filter(|_| pins.attached()).map(|p| p.interface),
        });
    }

    let _lock = state::lock(&opts.dirs)?;
    let _pin_lock = pins.lock()?;
    let adopting = pins.attached();
    match start(&opts, config, &iface, &pins, previous.as_ref(), adopting) {
        Ok(Started {
            guard,
            config,
            state,
            mut keeper,
            contents,
        }) => {
            let facts = Arc::new(DaemonFacts::default());
            let bans = BanKeeper::start(&config, &mut keeper.bans);
            let crowdsec = CrowdsecKeeper::start(&config.crowdsec);
            raise_open_files_limit();
            if let Some(listen) = config.metrics_listen {
                let cpus = crate::kernel::policy::HostFacts::of_this_host().map_or(1, |h| h.cpus);
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
                keeper,
                bans,
                crowdsec,
                bans_published: Instant::now(),
                bans_unpublished: false,
                refusals: super::refusals::RefusalWatch::default(),
                floods: super::flood_watch::FloodWatch::default(),
                marks: super::cookie_marks::CookieMarks::default(),
                contents,
                config_text: None,
                links: match LinkWatch::open() {
                    Ok(w) => Some(w),
                    Err(e) => {
                        log::warn!(
                            "cannot watch interfaces over rtnetlink ({e}): checked twice a second instead"
                        );
                        None
                    }
                },
                attach_error: None,
            };
            daemon.config_text = text;
            daemon.keep_syncookies();
            daemon.publish();
            if let Some(within) = opts.confirm_within {
                log::warn!(
                    "unconfirmed: mailguard unloads itself in {within:?} unless `mailguard confirm` arrives \
                     (also if this daemon dies before)"
                );
                daemon.pending = Some(Pending {
                    deadline: Instant::now() + within,
                    undo: Undo::Unload,
                });
                if let Err(e) = confirm::arm(
                    &opts.dirs,
                    within,
                    UndoKind::Unload,
                    config_path(&opts.config),
                    daemon.config_text.clone(),
                    None,
                ) {
                    log::error!("the confirm window holds only while this daemon runs: {e}");
                }
            }
            daemon.serve(&signals)
        }
        Err(e) => {
            pins.discard_new_maps();
            if !adopting {
                // A first start that failed leaves nothing pinned behind.
                if let Err(cleanup) = pins.remove_all() {
                    log::error!("{cleanup}");
                }
                return Err(e);
            }
            // Nothing in force was unpinned or replaced before the failing step: it stays.
            let on = previous.map_or_else(|| "its interface".to_string(), |p| p.interface);
            Err(RunError::Kept {
                on,
                source: Box::new(e),
            })
        }
    }
}

/// What a start leaves for the daemon.
pub(super) struct Started {
    guard: Guard,
    config: Config,
    state: RunState,
    keeper: ListKeeper,
    /// What the policy maps hold.
    contents: Contents,
}

/// Loads (reusing pinned maps), configures, and attaches (or replaces) both programs. The lists
/// start from their last good version on disk; the first refresh follows at once.
pub(super) fn start(
    opts: &RunOptions,
    config: Config,
    iface: &str,
    pins: &Pins,
    previous: Option<&RunState>,
    adopting: bool,
) -> Result<Started, RunError> {
    let keeper = ListKeeper::open(&config.lists);
    let contents = Contents::of(&config, &keeper.extra(&config.lists));
    // Before anything is loaded: a configuration that would lock someone out.
    let dangers = lockout::check(
        &lockout::Policy {
            config: &config,
            block: &contents.block,
        },
        None,
    );
    if !dangers.is_empty() {
        if !opts.force {
            return Err(RunError::LockOut(lockout::refusal(&dangers)));
        }
        log::warn!("--force: starting although {}", dangers.join("; "));
    }
    let (mut guard, recreated) = Guard::load_pinned(&config, pins)?;
    for r in &recreated {
        log::warn!("{r}");
    }
    {
        guard.policy_maps()?.write(&contents, &config)?;
    }
    let attached = guard.attach_xdp_pinned(iface, config.attach_mode, pins)?;
    // The new program is in force: the maps it made replace the pinned ones it did not reuse.
    pins.commit_new_maps()?;
    let mode = match attached {
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
        mx_only: config.mx_only,
        lists: Vec::new(),
        kernel: KernelFeatures::probed().release.clone(),
        kernel_degraded: KernelFeatures::probed().degraded.clone(),
        detached_since: None,
        bans: None,
        crowdsec: None,
        syn_cookies: None,
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
    Ok(Started {
        guard,
        config,
        state,
        keeper,
        contents,
    })
}

/// `mailguard confirm-watch`: the watchdog of confirm window `token` (confirm.rs). Sleeps
/// until the deadline, and undoes the change unless it was confirmed or the daemon rolled it
/// back itself.
pub fn confirm_watch(dirs: &Dirs, token: u64) -> Result<(), RunError> {
    loop {
        let pending = confirm::Pending::read(dirs);
        let alive = pending
            .as_ref()
            .is_some_and(|p| state::process_alive(p.daemon));
        match confirm::decide(pending.as_ref(), token, confirm::now_ms(), alive) {
            confirm::Watch::Wait => std::thread::sleep(Duration::from_millis(100)),
            confirm::Watch::Done => return Ok(()),
            confirm::Watch::Undo(UndoKind::Unload) => {
                log::warn!(
                    "confirm window over, the start unconfirmed and its daemon gone: unloading mailguard"
                );
                Pins::new(&dirs.pin).remove_all()?;
                state::forget(dirs)?;
                confirm::mark_rolled_back(dirs);
                return Ok(());
            }
            confirm::Watch::Undo(UndoKind::Restore) => {
                log::warn!(
                    "confirm window over, the reload unconfirmed and its daemon gone: writing the \
                     last confirmed configuration back"
                );
                restore_confirmed(dirs)?;
                confirm::mark_rolled_back(dirs);
                return Ok(());
            }
        }
    }
}

/// Writes the last confirmed configuration (`confirmed.toml`) into the pinned maps, as a
/// start would (the programs are loaded for their maps, not attached).
pub(super) fn restore_confirmed(dirs: &Dirs) -> Result<(), RunError> {
    let path = confirm::confirmed_path(dirs);
    let text = std::fs::read_to_string(&path).map_err(|source| {
        RunError::Config(ConfigError::Read {
            path: path.clone(),
            source,
        })
    })?;
    let (config, _) = Config::parse(&text, &path.display().to_string())?;
    let pins = Pins::new(&dirs.pin);
    let previous = RunState::read(dirs).ok();
    let mut guard = Guard::over_pinned_maps(&config, &pins)?;
    let keeper = ListKeeper::open(&config.lists);
    let contents = Contents::of(&config, &keeper.extra(&config.lists));
    guard.policy_maps()?.write(&contents, &config)?;
    if let Some(mut state) = previous {
        state.monitor = config.monitor;
        state.mx_only = config.mx_only;
        state.write(dirs)?;
    }
    log::warn!("the last confirmed configuration is in force again");
    Ok(())
}

/// Raises the soft limit of open files to the hard one (at most 65536): the metrics endpoint
/// holds a descriptor per connection, and a crowd of idle clients must not starve a scrape of
/// them (it also closes the oldest connection when out of descriptors).
pub(super) fn raise_open_files_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            let wanted = limit.rlim_max.min(65536);
            if limit.rlim_cur < wanted {
                limit.rlim_cur = wanted;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// Tells systemd (`Type=notify`) about the daemon's state, when started by it.
pub(super) fn sd_notify(state: &str) {
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
