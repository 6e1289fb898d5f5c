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
    confirm::{self, AtStart, UndoKind},
    control::{ControlServer, Request, Response, answer},
    guard::{AttachMode, Attachment, Guard, GuardError},
    kernel_features::KernelFeatures,
    link_watch::LinkWatch,
    list_keeper::ListKeeper,
    lists::{ListName, ListSummary, now_unix},
    lockout,
    metrics::{self, DaemonFacts},
    pins::Pins,
    policy::Contents,
    signals::Signals,
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
    Pins(#[from] crate::pins::PinError),
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
fn config_path(explicit: &Option<PathBuf>) -> Option<PathBuf> {
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
fn with_overrides(
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

fn now() -> u64 {
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
    if crate::guard::interface_index(&iface).is_err() {
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
            keeper,
            contents,
        }) => {
            let facts = Arc::new(DaemonFacts::default());
            raise_open_files_limit();
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
                keeper,
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
struct Started {
    guard: Guard,
    config: Config,
    state: RunState,
    keeper: ListKeeper,
    /// What the policy maps hold.
    contents: Contents,
}

/// Loads (reusing pinned maps), configures, and attaches (or replaces) both programs. The lists
/// start from their last good version on disk; the first refresh follows at once.
fn start(
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
        let mut maps = guard.policy_maps()?;
        let current = maps.read_contents()?;
        maps.apply_over(&current, &contents, &config)?;
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

/// What undoes an unconfirmed change.
enum Undo {
    /// Go back to this configuration, and the text of its file (an unconfirmed reload).
    Restore(Box<(Config, Option<String>)>),
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
    keeper: ListKeeper,
    /// What the policy maps hold.
    contents: Contents,
    /// The text of the configuration file in force (`None`: the built-in defaults).
    config_text: Option<String>,
    /// Interfaces coming and going (rtnetlink), when it could be opened.
    links: Option<LinkWatch>,
    /// The last attach failure logged while the interface is back but not attached.
    attach_error: Option<String>,
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
            // Woken at once by a signal or a control request; polled quicker while a refresh
            // runs, so that its outcome is applied (and answered) promptly.
            let timeout = Duration::from_millis(if self.keeper.fetching() { 10 } else { 500 });
            let wake: Vec<_> = control
                .iter()
                .map(ControlServer::fd)
                .chain(self.links.as_ref().map(LinkWatch::fd))
                .collect();
            if let Some(sig) = signals.wait(timeout, &wake).map_err(RunError::Signals)? {
                if sig == libc::SIGHUP {
                    sd_notify("RELOADING=1");
                    let _ = self.reload(None, false);
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
                    Ok(request) => self.handle(request),
                    Err(message) => Some(Response::failed(message)),
                };
                match response {
                    Some(response) => {
                        if let Err(e) = answer(&stream, &response) {
                            log::warn!("control socket: {e}");
                        }
                    }
                    None => self.keeper.wait(stream),
                }
            }
            self.follow_interface();
            self.keep_lists()?;
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
                        let (config, text) = *previous;
                        self.config = config;
                        self.config_text = text;
                        self.sync_maps()?;
                        confirm::mark_rolled_back(&self.opts.dirs);
                        self.facts.rollbacks.fetch_add(1, Ordering::Relaxed);
                        self.state.monitor = self.config.monitor;
                        self.state.mx_only = self.config.mx_only;
                        self.publish();
                    }
                    Undo::Unload => {
                        log::warn!("start not confirmed in time: unloading mailguard");
                        sd_notify("STOPPING=1");
                        self.pins.remove_all()?;
                        state::forget(&self.opts.dirs)?;
                        confirm::mark_rolled_back(&self.opts.dirs);
                        return Err(RunError::RolledBack);
                    }
                }
            }
        }
    }

    /// Keeps the XDP program on the interface: when the interface goes away (a network
    /// restart, a re-created VLAN or bond), its attachment goes with it; this notices (on a
    /// link event, or at the latest on the loop's next turn), says so in the log, `status` and
    /// the metrics, and attaches again, with the same maps, as soon as an interface of that name
    /// is back.
    fn follow_interface(&mut self) {
        if let Some(links) = &self.links {
            links.drain();
        }
        let iface = self.state.interface.clone();
        let index = crate::guard::interface_index(&iface).ok();
        let pinned_on = crate::pins::xdp_link_ifindex(&self.pins.xdp_link()).ok();
        if index.is_some() && index == pinned_on {
            return;
        }
        let since = *self.state.detached_since.get_or_insert_with(|| {
            log::warn!(
                "{iface} is NOT guarded: {}; mailguard attaches again as soon as it is back",
                if index.is_none() {
                    "the interface went away"
                } else {
                    "its XDP attachment went away"
                }
            );
            now()
        });
        if index.is_none() {
            self.publish();
            return;
        }
        match self
            .guard
            .attach_xdp_pinned(&iface, self.config.attach_mode, self.pins)
        {
            Ok(attachment) => {
                if let Attachment::New(mode) = attachment {
                    self.state.mode = mode.name().to_string();
                }
                log::warn!(
                    "{iface} is back: guarded again, with the same maps, after {} s unguarded",
                    now().saturating_sub(since)
                );
                self.state.detached_since = None;
                self.attach_error = None;
                self.publish();
            }
            Err(e) => {
                let message = e.to_string();
                if self.attach_error.as_ref() != Some(&message) {
                    log::error!("{iface} is back but attaching failed (trying again): {message}");
                    self.attach_error = Some(message);
                }
                self.publish();
            }
        }
    }

    /// Answers a control request; `None` when the answer comes later (a list refresh).
    fn handle(&mut self, request: Request) -> Option<Response> {
        Some(match request {
            Request::Reload {
                confirm_within,
                force,
            } => {
                sd_notify("RELOADING=1");
                let r = self.reload(confirm_within.map(Duration::from_secs), force);
                sd_notify("READY=1");
                match r {
                    Ok(message) => Response::ok(message),
                    Err(message) => Response::failed(message),
                }
            }
            Request::Confirm => match self.pending.take() {
                Some(_) => {
                    confirm::disarm(&self.opts.dirs);
                    log::info!("change confirmed");
                    Response::ok("confirmed: the change stays")
                }
                None => Response::failed("nothing is waiting for confirmation"),
            },
            Request::ListEdit {
                list,
                add,
                entries,
                seconds,
                force,
            } => self.edit_list(list, add, &entries, seconds, force),
            Request::ListShow { list } => {
                let mut data = serde_json::json!({ "lists": self.summaries(), "mx_only": self.config.mx_only });
                if let Some(list) = list {
                    data["entries"] = serde_json::json!(self.keeper.state.entries(
                        &self.config.lists,
                        list,
                        now_unix()
                    ));
                }
                Response {
                    ok: true,
                    message: String::new(),
                    data: Some(data),
                }
            }
            Request::ListRefresh { force } => {
                if !ListName::ALL
                    .iter()
                    .any(|l| self.config.lists.sources(*l).is_external())
                {
                    return Some(Response::failed(
                        "no list has files or SPF records to refresh",
                    ));
                }
                self.keeper.start_fetch(&self.config.lists, force);
                return None;
            }
        })
    }

    /// `mailguard allow|trust|block add|del`: all entries or none, kept on disk, applied at once.
    fn edit_list(
        &mut self,
        list: ListName,
        add: bool,
        entries: &[String],
        seconds: Option<u64>,
        force: bool,
    ) -> Response {
        let mut nets = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            match config::parse_cidr(e) {
                Ok(n) => nets.push(n),
                Err(m) => {
                    return Response::failed(format!("entry {}: {m}; nothing changed", i + 1));
                }
            }
        }
        let before = self.keeper.state.clone();
        let message = match self
            .keeper
            .state
            .edit(&self.config.lists, list, add, &nets, seconds)
        {
            Ok(m) => m,
            Err(m) => return Response::failed(format!("{m}; nothing changed")),
        };
        if add && list == ListName::Block {
            let extra = self.keeper.extra(&self.config.lists);
            let after = Contents::of(&self.config, &extra);
            let dangers = lockout::check(
                &lockout::Policy {
                    config: &self.config,
                    block: &after.block,
                },
                Some(&lockout::Policy {
                    config: &self.config,
                    block: &self.contents.block,
                }),
            );
            if !dangers.is_empty() {
                if !force {
                    self.keeper.state = before;
                    return Response::failed(lockout::refusal(&dangers));
                }
                log::warn!("--force: blocking although {}", dangers.join("; "));
            }
        }
        if let Err(e) = self.keeper.state.save(&self.config.lists.state_dir) {
            self.keeper.state = before;
            return Response::failed(format!("{e}; nothing changed"));
        }
        if let Err(e) = self.sync_maps() {
            return Response::failed(format!("saved, but writing the maps failed: {e}"));
        }
        log::info!("{message}");
        self.publish();
        Response::ok(message)
    }

    /// Periodic list work: starts a refresh when one is due, applies a finished one (answering
    /// whoever waits for it), and lets run-time entries expire.
    fn keep_lists(&mut self) -> Result<(), RunError> {
        if self.keeper.due(&self.config.lists) {
            self.keeper.start_fetch(&self.config.lists, false);
        }
        if let Some((reports, clients)) = self.keeper.poll(&self.config.lists) {
            let written = self.sync_maps();
            self.facts.list_refreshes.fetch_add(1, Ordering::Relaxed);
            self.publish();
            let failed = reports.iter().filter(|r| r.error.is_some()).count();
            let response = match &written {
                Err(e) => Response::failed(format!("refreshed, but writing the maps failed: {e}")),
                Ok(()) if failed > 0 => {
                    Response::failed(format!("{failed} list(s) kept their last good version"))
                }
                Ok(()) => Response::ok("lists refreshed"),
            };
            let data = serde_json::json!({ "refresh": reports, "lists": self.summaries(), "mx_only": self.config.mx_only });
            let response = Response {
                data: Some(data),
                ..response
            };
            for client in clients {
                if let Err(e) = answer(&client, &response) {
                    log::warn!("control socket: {e}");
                }
            }
            written?;
        }
        if self.keeper.expire(&self.config.lists) {
            self.sync_maps()?;
            self.publish();
        }
        Ok(())
    }

    /// Writes what the configuration and the lists ask for into the maps, as a swap. When that
    /// fails half-way, what the maps hold is read back as the base of the next update.
    fn sync_maps(&mut self) -> Result<(), GuardError> {
        let desired = Contents::of(&self.config, &self.keeper.extra(&self.config.lists));
        let mut maps = self.guard.policy_maps()?;
        match maps.apply_over(&self.contents, &desired, &self.config) {
            Ok(()) => {
                self.contents = desired;
                Ok(())
            }
            Err(e) => {
                match maps.read_contents() {
                    Ok(c) => self.contents = c,
                    Err(r) => log::error!("cannot read back the maps: {r}"),
                }
                Err(e)
            }
        }
    }

    /// The lists at a glance.
    fn summaries(&self) -> Vec<ListSummary> {
        let runtime_now = now_unix();
        ListName::ALL
            .iter()
            .map(|&list| {
                let held = self.contents.list(list);
                let status = self
                    .keeper
                    .state
                    .status
                    .get(&list)
                    .cloned()
                    .unwrap_or_default();
                let sources = self.config.lists.sources(list).external();
                ListSummary {
                    list,
                    ipv4: held.v4.len(),
                    ipv6: held.v6.len(),
                    runtime: self.keeper.state.runtime.get(&list).map_or(0, |r| {
                        r.values().filter(|u| **u == 0 || **u > runtime_now).count()
                    }),
                    sources,
                    last_refresh: status.last_success,
                    refresh_failures: status.failures,
                    last_error: status.last_error,
                }
            })
            .collect()
    }

    /// Writes the state file `status` and the metrics read.
    fn publish(&mut self) {
        self.state.lists = self.summaries();
        if let Err(e) = self.state.write(&self.opts.dirs) {
            log::warn!("{e}");
        }
    }

    /// Re-reads the configuration. A bad file is refused (the configuration in force stays)
    /// and the answer says why. With `confirm_within`, the change is rolled back unless
    /// confirmed in time.
    fn reload(&mut self, confirm_within: Option<Duration>, force: bool) -> Result<String, String> {
        let (new, warnings, text) = match effective_config(self.opts) {
            Ok((new, warnings, text)) => {
                for w in &warnings {
                    log::warn!("{w}");
                }
                (new, warnings, text)
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
        // A change that would lock someone out, unless forced.
        let after = Contents::of(&applied, &self.keeper.extra(&applied.lists));
        let dangers = lockout::check(
            &lockout::Policy {
                config: &applied,
                block: &after.block,
            },
            Some(&lockout::Policy {
                config: old,
                block: &self.contents.block,
            }),
        );
        if !dangers.is_empty() {
            if !force {
                let message = lockout::refusal(&dangers);
                log::error!("reload {message}");
                self.facts.reloads_failed.fetch_add(1, Ordering::Relaxed);
                return Err(message);
            }
            log::warn!("--force: reloading although {}", dangers.join("; "));
        }
        let sources_changed = ListName::ALL
            .iter()
            .any(|l| applied.lists.sources(*l).external() != old.lists.sources(*l).external());
        let previous = std::mem::replace(&mut self.config, applied);
        if let Err(e) = self.sync_maps() {
            log::error!("reload failed while writing the maps: {e}");
            self.facts.reloads_failed.fetch_add(1, Ordering::Relaxed);
            // Back to the configuration in force (the maps may hold some of both).
            self.config = previous;
            if let Err(e) = self.sync_maps() {
                log::error!("restoring the configuration in force: {e}");
            }
            return Err(format!("failed while writing the maps: {e}"));
        }
        if sources_changed {
            log::info!("list sources changed: refreshing now");
            self.keeper.refresh_soon();
        }
        self.state.monitor = self.config.monitor;
        self.state.mx_only = self.config.mx_only;
        self.publish();
        self.facts.reloads_ok.fetch_add(1, Ordering::Relaxed);
        let mut message = "configuration reloaded".to_string();
        if let Some(since) = self.state.detached_since {
            message.push_str(&format!(
                "; NOTE: {} is NOT guarded since {} s ago (its interface went away)",
                self.state.interface,
                now().saturating_sub(since)
            ));
        }
        let previous_text = std::mem::replace(&mut self.config_text, text);
        if let Some(within) = confirm_within {
            // Several unconfirmed reloads roll back to the last confirmed configuration.
            let (undo, confirmed) = match self.pending.take() {
                Some(Pending { undo, .. }) => (undo, None),
                None => {
                    let confirmed = previous_text.clone();
                    (
                        Undo::Restore(Box::new((previous, previous_text))),
                        confirmed,
                    )
                }
            };
            // The window outlives this daemon (confirm.rs); an unconfirmed start stays one.
            let kind = match undo {
                Undo::Unload => UndoKind::Unload,
                Undo::Restore(_) => UndoKind::Restore,
            };
            if let Err(e) = confirm::arm(
                &self.opts.dirs,
                within,
                kind,
                config_path(&self.opts.config),
                self.config_text.clone(),
                confirmed.as_deref(),
            ) {
                log::error!("the confirm window holds only while this daemon runs: {e}");
            }
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
        // The warnings reach whoever asked, not only the daemon's log.
        for w in &warnings {
            message.push_str(&format!("\nwarning: {w}"));
        }
        Ok(message)
    }
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
fn restore_confirmed(dirs: &Dirs) -> Result<(), RunError> {
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
    let mut maps = guard.policy_maps()?;
    let current = maps.read_contents()?;
    maps.apply_over(&current, &contents, &config)?;
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
fn raise_open_files_limit() {
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
