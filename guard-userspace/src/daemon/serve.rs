//! The running daemon: what it serves after `run.rs` has started it. Signals, control requests
//! (reload, confirm, list edits), list refreshes, the confirm window and the interface it
//! follows.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    config::lists::ListName,
    config::{self, Config},
    daemon::bans::BanKeeper,
    daemon::confirm::{self, UndoKind},
    daemon::control::{ControlServer, Request, Response, answer},
    daemon::crowdsec::CrowdsecKeeper,
    daemon::lockout,
    daemon::metrics::DaemonFacts,
    daemon::signals::Signals,
    daemon::spare::{self, Surroundings},
    daemon::state::{self, RunState},
    daemon::{
        cookie_marks::CookieMarks,
        flood_watch::{FloodWatch, OVER_THE_CEILING},
        refusals::{RefusalWatch, Threshold},
    },
    feeds::keeper::ListKeeper,
    feeds::saved::{ListSummary, now_unix},
    kernel::attach::Attachment,
    kernel::guard::{Guard, GuardError},
    kernel::link_watch::LinkWatch,
    kernel::pins::Pins,
    kernel::policy::Contents,
    kernel::source_table::SourceTable,
};
use guard_common::maps as names;

use super::run::{RunError, RunOptions, config_path, effective_config, now, sd_notify};

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What undoes an unconfirmed change.
pub(super) enum Undo {
    /// Go back to this configuration, and the text of its file (an unconfirmed reload).
    Restore(Box<(Config, Option<String>)>),
    /// Remove mailguard (an unconfirmed start).
    Unload,
}

pub(super) struct Pending {
    pub(super) deadline: Instant,
    pub(super) undo: Undo,
}

/// The running daemon.
pub(super) struct Daemon<'a> {
    pub(super) guard: Guard,
    pub(super) opts: &'a RunOptions,
    pub(super) config: Config,
    pub(super) state: RunState,
    pub(super) facts: Arc<DaemonFacts>,
    pub(super) pins: &'a Pins,
    pub(super) pending: Option<Pending>,
    pub(super) keeper: ListKeeper,
    /// Bans from the mail logs and Dovecot's policy reports.
    pub(super) bans: BanKeeper,
    pub(super) crowdsec: CrowdsecKeeper,
    /// The sources the budgets refuse, read for the CrowdSec agent.
    pub(super) refusals: RefusalWatch,
    /// Whether a SYN flood is on, for `syn_cookies = "under_flood"`.
    pub(super) floods: FloodWatch,
    /// When the mail listeners were marked as sending SYN cookies (kernels with cookies made
    /// from the SYN alone).
    pub(super) marks: CookieMarks,
    /// When the state file was last written (for the bans it is written at most 4 times a
    /// second), and whether the bans changed since.
    pub(super) bans_published: Instant,
    pub(super) bans_unpublished: bool,
    /// What the policy maps hold.
    pub(super) contents: Contents,
    /// The text of the configuration file in force (`None`: the built-in defaults).
    pub(super) config_text: Option<String>,
    /// Interfaces coming and going (rtnetlink), when it could be opened.
    pub(super) links: Option<LinkWatch>,
    /// The last attach failure logged while the interface is back but not attached.
    pub(super) attach_error: Option<String>,
}

impl Daemon<'_> {
    /// Serves until SIGINT or SIGTERM (the protection stays pinned until `mailguard unload`),
    /// or until an unconfirmed start runs out of time (then it unloads itself). Meanwhile:
    /// SIGHUP and `mailguard reload` re-read the configuration, `mailguard confirm` keeps a
    /// change, and an unconfirmed reload is rolled back on time.
    pub(super) fn serve(&mut self, signals: &Signals) -> Result<(), RunError> {
        let control = match ControlServer::bind(&self.opts.dirs) {
            Ok(c) => Some(c),
            Err(e) => {
                log::error!("`mailguard reload` and `confirm` unavailable: {e}");
                None
            }
        };
        self.lift_exempt_bans();
        sd_notify("READY=1");
        loop {
            // Woken at once by a signal or a control request; polled quicker while a refresh
            // runs, so that its outcome is applied (and answered) promptly.
            let timeout = Duration::from_millis(if self.keeper.fetching() { 10 } else { 500 });
            let wake: Vec<_> = control
                .iter()
                .map(ControlServer::fd)
                .chain(self.links.as_ref().map(LinkWatch::fd))
                .chain(self.bans.fd())
                .chain(self.crowdsec.fd())
                .collect();
            if let Some(sig) = signals.wait(timeout, &wake).map_err(RunError::Signals)? {
                if sig == libc::SIGHUP {
                    sd_notify("RELOADING=1");
                    let _ = self.reload(None, false);
                    sd_notify("READY=1");
                } else {
                    sd_notify("STOPPING=1");
                    self.bans
                        .save(&mut self.keeper.bans, &self.config.lists.state_dir, true);
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
            self.keep_bans();
            self.keep_crowdsec();
            self.keep_refusals();
            self.watch_floods();
            if self.keep_cookie_marks() {
                self.publish();
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

    /// Lifts bans the MX allowlist or trusted sources now hold, and writes the maps.
    fn lift_exempt_bans(&mut self) {
        let lifted = self.bans.lift_exempt(
            &mut self.keeper.bans,
            &self.contents.mx_allow,
            &self.contents.trusted,
        );
        if !lifted.is_empty() {
            if let Err(e) = self.sync_maps() {
                log::error!("bans: writing the maps after lifting bans failed: {e}");
            }
            self.bans
                .save(&mut self.keeper.bans, &self.config.lists.state_dir, true);
        }
    }

    /// Counts what the ban sources read; new bans are written into the maps at once (the
    /// time from event to ban is measured to here), and the bans file saved.
    fn keep_bans(&mut self) {
        let ports = lockout::watched_ports(&[&self.config]);
        let live = || lockout::live_sessions(&ports);
        let drained = self.bans.drain(
            &mut self.keeper.bans,
            &self.contents.mx_allow,
            &self.contents.trusted,
            &live,
        );
        self.crowdsec.share(drained.new_bans);
        if drained.banned {
            let writing = Instant::now();
            match self.sync_maps() {
                Ok(()) => {
                    if let Some(first) = drained.first_read {
                        self.bans.banned_in_force(first);
                        log::info!(
                            "bans: in force {:.1} ms after the event was read (maps written in {:.1} ms)",
                            first.elapsed().as_secs_f64() * 1000.0,
                            writing.elapsed().as_secs_f64() * 1000.0
                        );
                    }
                }
                Err(e) => {
                    log::error!("bans: writing the maps failed (trying again): {e}");
                    self.bans.unwritten();
                }
            }
        }
        self.bans
            .save(&mut self.keeper.bans, &self.config.lists.state_dir, false);
        self.bans.refresh_surroundings(&live);
        self.bans_unpublished |= drained.counted;
        if self.bans_unpublished && self.bans_published.elapsed() >= Duration::from_millis(250) {
            self.publish();
        }
    }

    /// Takes the LAPI's answers: each is written into the maps as a swap; one the maps cannot
    /// take (more entries than the block list holds) is refused whole, and the decisions in
    /// force stay.
    fn keep_crowdsec(&mut self) {
        let ports = lockout::watched_ports(&[&self.config]);
        let live = || lockout::live_sessions(&ports);
        let (pending, came) = self.crowdsec.drain(
            &self.keeper.crowdsec,
            &self.contents.mx_allow,
            &self.contents.trusted,
            &live,
        );
        let mut changed = false;
        for mut p in pending {
            let next = p
                .next
                .take()
                .filter(|n| p.full || *n != self.keeper.crowdsec);
            if let Some(next) = next {
                let writing = Instant::now();
                let before = std::mem::replace(&mut self.keeper.crowdsec, next);
                match self.sync_maps() {
                    Ok(()) => {
                        self.crowdsec
                            .applied(&p, &self.keeper.crowdsec, writing.elapsed());
                        if before != self.keeper.crowdsec {
                            log::info!(
                                "crowdsec: {} decisions in force ({} answer read in {:.1} ms, maps written in {:.1} ms)",
                                self.keeper.crowdsec.decisions.len(),
                                if p.full { "full" } else { "delta" },
                                p.took.as_secs_f64() * 1000.0,
                                writing.elapsed().as_secs_f64() * 1000.0
                            );
                            changed = true;
                        }
                    }
                    Err(e) => {
                        self.keeper.crowdsec = before;
                        self.crowdsec.refused(e.to_string());
                        // What the maps hold now is what they held (the swap failed before
                        // writing, or was read back): write the set in force again.
                        if let Err(e) = self.sync_maps() {
                            log::error!("crowdsec: restoring the decisions in force: {e}");
                        }
                        // Later answers build on the refused one: the next full read sets
                        // things right.
                        break;
                    }
                }
            } else {
                self.crowdsec
                    .applied(&p, &self.keeper.crowdsec, Duration::ZERO);
            }
        }
        if changed {
            self.keeper.save_crowdsec(&self.config.lists);
        }
        // An answer comes at most once per poll interval: the state file (`status`, the
        // metrics) shows its outcome as soon as the maps hold it.
        if came {
            self.publish();
        }
    }

    /// Shares the sources the budgets refuse (`crowdsec.share_refused`) through the CrowdSec
    /// agent: their refusal counts are read from XDP's source table every few seconds. What
    /// must never be blocked is not shared (logged).
    fn keep_refusals(&mut self) {
        let c = &self.config.crowdsec;
        if !c.agent() || c.share_refused == 0 || !self.refusals.due() {
            return;
        }
        let table = match state::pinned(&self.opts.dirs, names::SOURCES) {
            Ok(map) => SourceTable::open(&map).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let table = match table {
            Ok(t) => t,
            Err(e) => {
                log::warn!("crowdsec: the sources' refusals cannot be read: {e}");
                return;
            }
        };
        let threshold = Threshold {
            refused: c.share_refused,
            seconds: c.share_refused_for,
            prefix_v4: self.config.budgets.source_prefix_v4,
            prefix_v6: self.config.budgets.source_prefix_v6,
        };
        let found = self.refusals.read(table.in_use(), threshold, now_unix());
        if found.is_empty() {
            return;
        }
        let ports = lockout::watched_ports(&[&self.config]);
        let around = Surroundings::read(&|| lockout::live_sessions(&ports));
        let mut shared = Vec::new();
        for f in found {
            match spare::why(
                &f.net,
                &around,
                &self.contents.mx_allow,
                &self.contents.trusted,
            ) {
                Some(why) => log::warn!(
                    "crowdsec: {} {}: NOT shared: {}",
                    f.net,
                    f.what,
                    spare::explain(why)
                ),
                None => {
                    log::info!(
                        "crowdsec: sharing {} ({}) for {}",
                        f.net,
                        f.what,
                        crate::config::durations::human_duration(f.seconds)
                    );
                    shared.push(f);
                }
            }
        }
        self.crowdsec.share_refused(shared);
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
        let index = crate::kernel::attach::interface_index(&iface).ok();
        let pinned_on = crate::kernel::pins::xdp_link_ifindex(&self.pins.xdp_link()).ok();
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
                    data["entries"] =
                        serde_json::json!(self.keeper.entries(&self.config.lists, list));
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
        // CrowdSec's decisions are lifted where they were made: `block del` says so.
        let remote = self.keeper.crowdsec.in_force(now_unix());
        let remote_note = |nets: &[IpNet]| -> String {
            let held: Vec<String> = nets
                .iter()
                .filter_map(|n| {
                    remote
                        .get(n)
                        .map(|(_, origins)| format!("{n} (origin {})", origins.join(", ")))
                })
                .collect();
            if held.is_empty() {
                String::new()
            } else {
                format!(
                    "; still blocked by CrowdSec decisions on {}: `cscli decisions delete --ip ADDRESS` (or `--range`) lifts them",
                    held.join(", ")
                )
            }
        };
        if !add && list == ListName::Block {
            let runtime = self.keeper.state.runtime.get(&list);
            let only_remote: Vec<IpNet> = nets
                .iter()
                .filter(|n| {
                    remote.contains_key(n)
                        && !self.keeper.bans.bans.contains_key(n)
                        && !runtime.is_some_and(|r| r.contains_key(n))
                })
                .copied()
                .collect();
            if !only_remote.is_empty() {
                return Response::failed(format!(
                    "{} blocked by CrowdSec, not by this host{}; nothing changed",
                    join(&only_remote),
                    remote_note(&only_remote)
                ));
            }
            // Lifting bans: `block del` takes bans as well as run-time entries.
            let (banned, rest): (Vec<IpNet>, Vec<IpNet>) = nets
                .iter()
                .partition(|n| self.keeper.bans.bans.contains_key(n));
            if !banned.is_empty() {
                let before = self.keeper.state.clone();
                let mut message =
                    format!("lifted the ban on {}{}", join(&banned), remote_note(&nets));
                if !rest.is_empty() {
                    match self
                        .keeper
                        .state
                        .edit(&self.config.lists, list, false, &rest, None)
                    {
                        Ok(m) => message = format!("{m}; {message}"),
                        Err(m) => return Response::failed(format!("{m}; nothing changed")),
                    }
                    if let Err(e) = self.keeper.state.save(&self.config.lists.state_dir) {
                        self.keeper.state = before;
                        return Response::failed(format!("{e}; nothing changed"));
                    }
                }
                self.bans.pardon(&mut self.keeper.bans, &banned);
                self.bans
                    .save(&mut self.keeper.bans, &self.config.lists.state_dir, true);
                if let Err(e) = self.sync_maps() {
                    return Response::failed(format!("saved, but writing the maps failed: {e}"));
                }
                log::info!("{message}");
                self.publish();
                return Response::ok(message);
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
        let message = if !add && list == ListName::Block {
            message + &remote_note(&nets)
        } else {
            message
        };
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
            self.crowdsec.recount(&self.keeper.crowdsec);
            self.bans.publish_banned(&self.keeper.bans);
            self.bans.touched();
            self.sync_maps()?;
            self.publish();
        }
        Ok(())
    }

    /// With `syn_cookies = "under_flood"`: reads XDP's counts of SYNs over the ceiling, and
    /// when a flood begins or ends, makes the kernel ready for the cookies or puts it back
    /// (`keep_syncookies`, `keep_cookie_marks`).
    fn watch_floods(&mut self) {
        use crate::config::budgets::SynCookies;
        let now = Instant::now();
        if self
            .config
            .budgets
            .cookies_in_effect(crate::kernel::cookies::from_the_syn())
            != SynCookies::UnderFlood
            || !self.floods.due(now)
        {
            return;
        }
        let over: u64 = match self.guard.counters() {
            Ok(c) => OVER_THE_CEILING.iter().map(|r| c.get(*r)).sum(),
            Err(e) => {
                log::warn!("SYN cookies: cannot read the counters to see a flood: {e}");
                return;
            }
        };
        let was = self.state.syn_cookies.as_ref().is_some_and(|c| c.flood);
        let hold = Duration::from_secs(self.config.budgets.syn_cookies_hold);
        if self.floods.observe(over, now, hold) != was {
            self.keep_syncookies();
            self.publish();
        }
    }

    /// Keeps `net.ipv4.tcp_syncookies` as SYN cookies from XDP need it, and what `status`
    /// shows of them (`kernel::syncookie_sysctl`). Cookies are needed with `always`, and with
    /// `under_flood` while a flood is on.
    /// - Cookies made from the SYN alone (Linux 6.0): the operator's value stands, but for 0,
    ///   which is 1 while cookies are needed (the listeners' marks: `keep_cookie_marks`).
    /// - Older kernels: 2 while cookies are needed.
    ///
    /// Otherwise the value found before is put back.
    pub(super) fn keep_syncookies(&mut self) {
        use crate::{
            config::{budgets::SynCookies, durations::human_duration},
            kernel::{
                cookies::CookieEnv,
                syncookie_sysctl::{self, Change},
            },
        };
        let run = &self.opts.dirs.run;
        let hold = self.config.budgets.syn_cookies_hold;
        let env = CookieEnv::read(Some(&self.state.interface));
        let (mode, flood) = match self.config.budgets.cookies_in_effect(env.raw) {
            SynCookies::Off | SynCookies::Auto => {
                match syncookie_sysctl::restore(run) {
                    Ok(Change::Restored { to }) => {
                        log::info!("SYN cookies off: net.ipv4.tcp_syncookies put back to {to}");
                    }
                    Ok(_) => {}
                    Err(e) => log::error!("{e}"),
                }
                self.floods.reset();
                self.marks.reset();
                self.state.syn_cookies = None;
                return;
            }
            SynCookies::UnderFlood => (
                "under_flood",
                self.floods
                    .flooding(Instant::now(), Duration::from_secs(hold)),
            ),
            SynCookies::Always => {
                self.floods.reset();
                ("always", false)
            }
        };
        let needed = mode == "always" || flood;
        // What the setting is to be while cookies are needed (`None`: as the operator has it,
        // which is the value kept when mailguard changed it).
        let wanted = if env.raw {
            syncookie_sysctl::kept(run)
                .or_else(|| syncookie_sysctl::current().ok())
                .filter(|v| *v == 0)
                .map(|_| 1)
        } else {
            Some(2)
        };
        let problem = if !env.helper {
            let _ = syncookie_sysctl::restore(run);
            Some(format!(
                "this kernel (Linux {}) has no bpf_tcp_gen_syncookie for XDP (Linux 5.3)",
                crate::kernel::features::kernel_release()
            ))
        } else if !needed || wanted.is_none() {
            match syncookie_sysctl::restore(run) {
                Ok(Change::Restored { to }) => {
                    log::info!(
                        "SYN flood over (no SYN over the ceiling for {}): net.ipv4.tcp_syncookies put back to {to}",
                        human_duration(hold)
                    );
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        } else {
            let value = wanted.unwrap_or(2);
            match syncookie_sysctl::hold(run, value) {
                Ok(Change::Enabled { was }) if flood => {
                    log::warn!(
                        "SYN flood: SYNs over the ceiling are answered with SYN cookies; net.ipv4.tcp_syncookies set to {value} until {} after the flood (it was {was})",
                        human_duration(hold)
                    );
                    None
                }
                Ok(Change::Enabled { was }) => {
                    log::info!(
                        "SYN cookies ({mode}): net.ipv4.tcp_syncookies set to {value} (it was {was}; `unload` or syn_cookies = \"off\" puts it back)"
                    );
                    None
                }
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            }
        };
        let was_flood = self.state.syn_cookies.as_ref().is_some_and(|c| c.flood);
        if env.raw && flood && !was_flood {
            log::warn!(
                "SYN flood: SYNs over the ceiling are answered with SYN cookies made in XDP; the mail listeners are marked as sending cookies until {} after the flood",
                human_duration(hold)
            );
        } else if env.raw && was_flood && !flood {
            log::info!(
                "SYN flood over (no SYN over the ceiling for {}): the mail listeners are no longer marked",
                human_duration(hold)
            );
        }
        let before = self
            .state
            .syn_cookies
            .as_ref()
            .and_then(|s| s.problem.clone());
        if let Some(p) = problem.as_ref().filter(|p| Some(*p) != before.as_ref()) {
            log::error!("SYN cookies cannot be made: {p}; SYNs over the SYN ceiling are dropped");
        }
        if !needed {
            self.marks.reset();
        }
        let timestamps = env.tcp_timestamps == 2;
        self.state.syn_cookies = Some(state::SynCookieState {
            mode: mode.into(),
            timestamps,
            tcp_syncookies_was: syncookie_sysctl::kept(run),
            problem,
            flood,
            hold,
            raw: env.raw,
            marked: self.marks.ports(),
        });
        // Marked at once when cookies become needed, not at the next turn of the loop.
        self.keep_cookie_marks();
    }

    /// With cookies made from the SYN alone, while they are needed: marks the mail listeners as
    /// sending cookies (`kernel::listener_marks`) when `daemon::cookie_marks` says so, and
    /// tells XDP until when it may answer on their ports (`COOKIE_PORTS`). Returns whether it
    /// marked or tried to (what `status` shows of it changed).
    fn keep_cookie_marks(&mut self) -> bool {
        use crate::kernel::listener_marks::{self, XDP_TRUSTS_A_MARK};
        let Some(c) = self.state.syn_cookies.as_ref() else {
            return false;
        };
        let now = Instant::now();
        if !c.raw || !(c.mode == "always" || c.flood) || !self.marks.check_due(now) {
            return false;
        }
        let listeners = listener_marks::listeners(&self.config.mail_ports);
        if !self.marks.mark_due(now, &listeners) {
            return false;
        }
        let outcome = listener_marks::mark(&listeners, &self.opts.dirs.run)
            .map_err(|e| e.to_string())
            .and_then(|began| {
                let until = crate::kernel::monotonic_coarse_ns()
                    .saturating_sub(began.elapsed().as_nanos() as u64)
                    + XDP_TRUSTS_A_MARK.as_nanos() as u64;
                let ports: Vec<(u16, u64)> = self
                    .config
                    .mail_ports
                    .iter()
                    .map(|p| {
                        let marked = listeners.iter().any(|l| l.port == *p);
                        (*p, if marked { until } else { 0 })
                    })
                    .collect();
                self.guard
                    .set_cookie_ports(&ports)
                    .map_err(|e| e.to_string())
                    .map(|()| began)
            });
        let problem = match outcome {
            Ok(began) => {
                let first = !self.marks.any();
                self.marks.marked(began, listeners);
                let ports = self.marks.ports();
                if ports.is_empty() {
                    Some("no socket listens on a mail port".to_string())
                } else {
                    if first {
                        log::info!(
                            "SYN cookies: the listeners on ports {} marked as sending cookies (again every minute while cookies are needed)",
                            join_ports(&ports)
                        );
                    }
                    None
                }
            }
            Err(e) => Some(format!("cannot mark the mail listeners: {e}")),
        };
        let c = self.state.syn_cookies.as_mut().expect("checked above");
        if let Some(p) = problem.as_ref().filter(|p| Some(*p) != c.problem.as_ref()) {
            log::error!("SYN cookies cannot be made: {p}; SYNs over the SYN ceiling are dropped");
        }
        c.problem = problem;
        c.marked = self.marks.ports();
        true
    }

    /// Writes what the configuration and the lists ask for into the maps, as a swap. When that
    /// fails half-way, what the maps hold is read back as the base of the next update.
    fn sync_maps(&mut self) -> Result<(), GuardError> {
        let desired = Contents::of(&self.config, &self.keeper.extra(&self.config.lists));
        let mut maps = self.guard.policy_maps()?;
        match maps.apply_over(&self.contents, &desired, &self.config) {
            Ok(()) => {
                self.contents = desired;
                self.keep_syncookies();
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
    pub(super) fn publish(&mut self) {
        self.state.lists = self.summaries();
        self.state.bans = self
            .bans
            .enabled()
            .then(|| self.bans.summary(&self.keeper.bans));
        self.state.crowdsec = (self.crowdsec.enabled()
            || !self.keeper.crowdsec.decisions.is_empty())
        .then(|| self.crowdsec.summary());
        self.bans_published = Instant::now();
        self.bans_unpublished = false;
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
        if let Some(note) = self.bans.reload(&self.config, &mut self.keeper.bans) {
            notes.push(note);
        }
        if let Some(note) = self.crowdsec.reload(&self.config.crowdsec) {
            notes.push(note);
        }
        self.lift_exempt_bans();
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

/// Ports as `25, 587`.
fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
