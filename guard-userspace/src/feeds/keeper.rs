//! The daemon's side of the lists: the saved state (last good fetched entries, run-time
//! additions), fetching files and SPF records on a background thread every refresh interval
//! (and on `mailguard lists refresh`), and the clients waiting for a refresh to finish.
//! Fetching never touches the maps: the daemon applies what the keeper accepted, as a swap.

use std::{
    collections::BTreeSet,
    os::unix::net::UnixStream,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use ipnet::IpNet;

use crate::{
    config::lists::{ListName, Lists},
    feeds::ban_state::BanState,
    feeds::crowdsec::decisions::DecisionSet,
    feeds::saved::{self, ListEntry, ListState, now_unix},
    feeds::spf,
    kernel::policy::Extra,
};

/// What a refresh fetched: per list, its sources and their entries (or the first problem).
type Outcome = Vec<(ListName, Vec<String>, Result<BTreeSet<IpNet>, String>)>;

/// What became of one list in a refresh.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ListReport {
    pub list: ListName,
    /// Entries fetched (when accepted).
    pub entries: Option<usize>,
    pub error: Option<String>,
}

pub struct ListKeeper {
    pub state: ListState,
    /// Bans from the mail logs (`bans.json`): block list entries with an end.
    pub bans: BanState,
    /// A CrowdSec LAPI's decisions in force (`crowdsec.json`): block list entries with an end.
    pub crowdsec: DecisionSet,
    fetching: Option<(mpsc::Receiver<Outcome>, bool)>,
    next_refresh: Instant,
    waiting: Vec<UnixStream>,
}

/// Reports an unreadable saved state and returns an empty one in its place; a corrupt file is
/// first moved aside, so that nothing in it is lost.
fn unreadable<T: Default>(e: saved::ListError, instead: &str) -> T {
    log::error!("{e}; {instead}");
    if let saved::ListError::Corrupt { path, .. } = &e {
        let aside = path.with_extension(format!("json.corrupt-{}", now_unix()));
        match std::fs::rename(path, &aside) {
            Ok(()) => log::error!("the unreadable state is kept as {}", aside.display()),
            Err(r) => log::error!("cannot move {} aside: {r}", path.display()),
        }
    }
    T::default()
}

impl ListKeeper {
    /// The saved state. An unreadable one is reported and replaced by an empty one (the
    /// configuration's own entries still apply, and the next refresh fetches the rest); a
    /// corrupt file is first moved aside, so that nothing in it is lost.
    pub fn open(config: &Lists) -> ListKeeper {
        let state = ListState::load(&config.state_dir)
            .unwrap_or_else(|e| unreadable(e, "starting from the configuration's entries only"));
        let bans = BanState::load(&config.state_dir)
            .unwrap_or_else(|e| unreadable(e, "starting without the bans it held"));
        let crowdsec = DecisionSet::load(&config.state_dir).unwrap_or_else(|e| {
            unreadable(
                e,
                "starting without the CrowdSec decisions it held (the LAPI gives them again)",
            )
        });
        ListKeeper {
            state,
            bans,
            crowdsec,
            fetching: None,
            next_refresh: Instant::now(),
            waiting: Vec::new(),
        }
    }

    /// The entries beyond the configuration's, for the maps: fetched and run-time ones, the
    /// bans and the CrowdSec decisions in force.
    pub fn extra(&self, config: &Lists) -> Extra {
        let now = now_unix();
        let mut extra = self.state.extra(config, now);
        let block = extra.entry(ListName::Block).or_default();
        let timed = self
            .bans
            .bans
            .iter()
            .filter(|(_, b)| b.until > now)
            .map(|(net, b)| (*net, b.until))
            .chain(
                self.crowdsec
                    .in_force(now)
                    .into_iter()
                    .map(|(net, (until, _))| (net, until)),
            );
        for (net, until) in timed {
            // An entry for ever (0) stays for ever; of two ends, the later.
            block
                .entry(net)
                .and_modify(|e| *e = if *e == 0 { 0 } else { (*e).max(until) })
                .or_insert(until);
        }
        extra
    }

    /// Every entry of `list` with its origins, the bans (`ban:RULE`) and CrowdSec decisions
    /// (`crowdsec:ORIGIN`) among them.
    pub fn entries(&self, config: &Lists, list: ListName) -> Vec<ListEntry> {
        let now = now_unix();
        let entries = self.state.entries(config, list, now);
        if list != ListName::Block {
            return entries;
        }
        let mut by_net: std::collections::BTreeMap<IpNet, ListEntry> =
            entries.into_iter().map(|e| (e.cidr, e)).collect();
        let mut add =
            |net: IpNet, origin: String, until: u64, ban: Option<&crate::feeds::ban_state::Ban>| {
                let e = by_net.entry(net).or_insert_with(|| ListEntry {
                    cidr: net,
                    origins: Vec::new(),
                    expires: Some(until),
                    ban: None,
                });
                e.origins.push(origin);
                e.expires = e.expires.map(|x| x.max(until));
                if let Some(b) = ban {
                    e.ban = Some(b.clone());
                }
            };
        for (net, ban) in self.bans.bans.iter().filter(|(_, b)| b.until > now) {
            add(*net, format!("ban:{}", ban.rule), ban.until, Some(ban));
        }
        for (net, (until, origins)) in self.crowdsec.in_force(now) {
            add(net, format!("crowdsec:{}", origins.join("+")), until, None);
        }
        by_net.into_values().collect()
    }

    /// Whether a refresh is running.
    pub fn fetching(&self) -> bool {
        self.fetching.is_some()
    }

    /// Makes the next periodic refresh due now (after the sources changed).
    pub fn refresh_soon(&mut self) {
        self.next_refresh = Instant::now();
    }

    /// Forgets expired run-time entries and bans; true when the maps need an update.
    pub fn expire(&mut self, config: &Lists) -> bool {
        let changed = self.state.expire(now_unix());
        if changed {
            self.save(config);
        }
        // The bans' file is saved by the daemon's ban keeper, with the logs' places.
        let decisions = self.crowdsec.expire(now_unix());
        if decisions {
            self.save_crowdsec(config);
        }
        changed | self.bans.expire(now_unix()) | decisions
    }

    pub fn save_crowdsec(&self, config: &Lists) {
        if let Err(e) = self.crowdsec.save(&config.state_dir) {
            log::error!("crowdsec: {e}");
        }
    }

    pub fn save(&self, config: &Lists) {
        if let Err(e) = self.state.save(&config.state_dir) {
            log::error!("lists: {e}");
        }
    }

    /// Whether a periodic refresh is due (and there is something to fetch).
    pub fn due(&self, config: &Lists) -> bool {
        self.fetching.is_none()
            && Instant::now() >= self.next_refresh
            && ListName::ALL
                .iter()
                .any(|l| config.sources(*l).is_external())
    }

    /// Starts fetching every list with files or SPF records, on a background thread.
    pub fn start_fetch(&mut self, config: &Lists, force: bool) {
        if let Some((_, forced)) = &mut self.fetching {
            // Forcing only changes how the outcome is accepted: the running fetch serves.
            *forced |= force;
            return;
        }
        self.next_refresh = Instant::now() + Duration::from_secs(config.refresh_interval);
        let (tx, rx) = mpsc::channel();
        let config = config.clone();
        let spawned = thread::Builder::new().name("lists".into()).spawn(move || {
            let options = spf::Options {
                dns_server: config.dns_server,
                lookup_limit: config.spf_lookup_limit,
            };
            let resolve = |domain: &str| spf::resolve(domain, &options).map_err(|e| e.to_string());
            let outcome: Outcome = ListName::ALL
                .iter()
                .filter(|l| config.sources(**l).is_external())
                .map(|l| {
                    (
                        *l,
                        config.sources(*l).external(),
                        saved::fetch(config.sources(*l), &resolve),
                    )
                })
                .collect();
            let _ = tx.send(outcome);
        });
        match spawned {
            Ok(_) => {
                log::info!("lists: refreshing{}", if force { " (forced)" } else { "" });
                self.fetching = Some((rx, force))
            }
            Err(e) => log::error!("lists: cannot start a refresh: {e}"),
        }
    }

    /// A client of `mailguard lists refresh`, answered when the refresh ends.
    pub fn wait(&mut self, client: UnixStream) {
        self.waiting.push(client);
    }

    /// A finished refresh, accepted into the state: the report, and the clients to answer.
    pub fn poll(&mut self, config: &Lists) -> Option<(Vec<ListReport>, Vec<UnixStream>)> {
        let (rx, force) = self.fetching.as_ref()?;
        let outcome = match rx.try_recv() {
            Ok(o) => o,
            Err(mpsc::TryRecvError::Empty) => return None,
            Err(mpsc::TryRecvError::Disconnected) => vec![],
        };
        let force = *force;
        self.fetching = None;
        let reports = outcome
            .into_iter()
            .map(|(list, from, result)| {
                match self
                    .state
                    .accept(list, from, result, config.max_shrink, force)
                {
                    Ok(n) => {
                        log::info!("list {list}: {n} fetched entries in force");
                        ListReport {
                            list,
                            entries: Some(n),
                            error: None,
                        }
                    }
                    Err(e) => {
                        log::error!(
                            "list {list}: refresh failed, the last good version stays: {e}"
                        );
                        ListReport {
                            list,
                            entries: None,
                            error: Some(e),
                        }
                    }
                }
            })
            .collect();
        self.save(config);
        Some((reports, std::mem::take(&mut self.waiting)))
    }
}
