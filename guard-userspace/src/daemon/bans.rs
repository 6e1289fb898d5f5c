//! The daemon's side of the bans: it starts the sources (`feeds::ban_sources`, the policy
//! server), counts what they read under the rules (`feeds::bans::Judge`), spares what must
//! never be banned, and puts new bans into the block list (the serve loop writes the maps at
//! once). The bans in force, the sources' places and the rules' counts are saved together in
//! `bans.json`.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    config::bans::Bans,
    daemon::lockout,
    daemon::spare::{self, SURROUNDINGS_MAX_AGE, Surroundings},
    feeds::{
        auth_policy::{BannedSet, PolicyCounts, PolicyServer},
        ban_sources::{Batch, Inbox, LogSources, Position, SourceKind},
        ban_state::{Ban, BanState},
        bans::{Judge, Verdict},
        maillog::{EventKind, Parsed},
    },
    kernel::policy::AddrList,
};

/// The bans file is saved at most this often while events arrive (and at exit).
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// Recent bans kept for `status` and `top`.
const RECENT: usize = 20;

/// Time from event to ban: histogram bucket bounds, in seconds.
pub const LATENCY_BUCKETS: [f64; 10] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// What the bans count, for the metrics and `status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BanCounts {
    /// Events by source kind and event kind: (`journal`, `auth`) -> n.
    pub events: BTreeMap<String, u64>,
    /// Log lines by outcome: `event`, `ignored` (a line of Postfix or Dovecot that is no
    /// event), `unknown` (a line of a shape not known: counted, not guessed at), `duplicate`
    /// (an authentication failure Dovecot's policy reports already).
    pub lines: BTreeMap<String, u64>,
    /// Bans by rule.
    pub bans: BTreeMap<String, u64>,
    /// Rules that fired without a ban, by rule and why (`rule/why`).
    pub spared: BTreeMap<String, u64>,
    /// Time from event to ban: counts per bucket of `LATENCY_BUCKETS` (and one beyond), sum.
    pub latency_buckets: Vec<u64>,
    pub latency_sum: f64,
    pub latency_count: u64,
}

/// A recent ban or spared verdict, for `status` and `top`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentBan {
    pub net: IpNet,
    pub rule: String,
    /// Unix seconds.
    pub at: u64,
    /// For a ban: when it ends; `None` when spared.
    pub until: Option<u64>,
    /// Why it was not banned (`local`, `mx_allow`, `trusted`, `live_session`, `monitor`, `capped`).
    pub spared: Option<String>,
}

/// The bans at a glance, in the state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BanSummary {
    pub active: usize,
    pub active_by_rule: BTreeMap<String, usize>,
    pub sources: Vec<String>,
    pub monitor: bool,
    pub counts: BanCounts,
    pub recent: Vec<RecentBan>,
    /// Sources and prefixes whose counts are kept.
    pub tracked: usize,
}

/// What a drain decided, for the serve loop.
pub struct Drained {
    /// Batches were counted (the summary changed).
    pub counted: bool,
    /// New bans were added: the maps need writing.
    pub banned: bool,
    /// The earliest read time of the events that banned, for the time from event to ban.
    pub first_read: Option<Instant>,
    /// The new bans, for the CrowdSec agent to share.
    pub new_bans: Vec<crate::feeds::crowdsec::agent::Finding>,
}

pub struct BanKeeper {
    settings: Bans,
    monitor: bool,
    judge: Judge,
    inbox: Option<Inbox>,
    logs: Option<LogSources>,
    policy: Option<PolicyServer>,
    banned: Arc<RwLock<BannedSet>>,
    pub counts: Arc<Mutex<BanCounts>>,
    recent: Vec<RecentBan>,
    dirty: bool,
    last_save: Instant,
    /// The operator's live sessions and the host's addresses, as last read (reading the
    /// kernel's socket table takes milliseconds: it is done off the path of a ban).
    surroundings: Option<Surroundings>,
    /// New bans not yet in the maps (their write failed): written again on the next turn.
    unwritten: bool,
}

impl BanKeeper {
    /// Starts the sources `config` names, from the places in `state`. A source that cannot
    /// start is reported and the others go on.
    pub fn start(config: &Config, state: &mut BanState) -> BanKeeper {
        let settings = config.bans.clone();
        let monitor = settings.monitor || config.monitor;
        let mut judge = Judge::new(settings.rules.clone(), monitor);
        let now = crate::feeds::saved::now_unix();
        judge.remember(std::mem::take(&mut state.memory), now);
        judge.in_force(state.bans.values().map(|b| b.until).collect());
        let mut keeper = BanKeeper {
            settings,
            monitor,
            judge,
            inbox: None,
            logs: None,
            policy: None,
            banned: Arc::new(RwLock::new(BannedSet::default())),
            counts: Arc::new(Mutex::new(BanCounts {
                latency_buckets: vec![0; LATENCY_BUCKETS.len() + 1],
                ..BanCounts::default()
            })),
            recent: Vec::new(),
            dirty: false,
            last_save: Instant::now(),
            surroundings: None,
            unwritten: false,
        };
        keeper.publish_banned(state);
        if !keeper.settings.enabled {
            return keeper;
        }
        match Inbox::new() {
            Ok(inbox) => keeper.inbox = Some(inbox),
            Err(e) => {
                log::error!("bans are OFF: cannot set up their event queue: {e}");
                return keeper;
            }
        }
        keeper.start_logs(state);
        if let (Some(addr), Some(inbox)) = (keeper.settings.policy_listen, &keeper.inbox) {
            match PolicyServer::start(addr, inbox.sender(), keeper.banned.clone()) {
                Ok(server) => {
                    log::info!(
                        "bans: answering Dovecot's authentication policy on http://{} (auth_policy_server_url)",
                        server.local
                    );
                    keeper.policy = Some(server);
                }
                Err(e) => log::error!(
                    "bans: Dovecot's policy requests are NOT answered: cannot listen on {addr}: {e}"
                ),
            }
        }
        log::info!(
            "bans: {} from {}",
            if keeper.monitor {
                "monitoring (nobody is banned)"
            } else {
                "banning"
            },
            keeper.sources().join(", ")
        );
        keeper
    }

    fn start_logs(&mut self, state: &BanState) {
        let Some(inbox) = &mut self.inbox else { return };
        let mut logs = inbox.start_logs();
        for path in &self.settings.files {
            logs.follow_file(path.clone(), state.files.get(path).copied());
        }
        if self.settings.journal {
            logs.follow_journal(state.journal_cursor.clone());
        }
        self.logs = Some(logs);
    }

    /// The sources, as `status` names them.
    pub fn sources(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .settings
            .files
            .iter()
            .map(|f| format!("file:{}", f.display()))
            .collect();
        if self.settings.journal {
            out.push("journal".into());
        }
        if let Some(p) = &self.policy {
            out.push(format!("policy:{}", p.local));
        }
        out
    }

    /// The descriptor that wakes the serve loop when events arrive.
    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.inbox.as_ref().map(Inbox::fd)
    }

    /// A reload: new rules and limits apply to what comes next (the counts so far are kept
    /// by rule name); changed files or journal are followed from where they were.
    /// `policy_listen` changes wait for the next start.
    pub fn reload(&mut self, config: &Config, state: &mut BanState) -> Option<String> {
        let new = &config.bans;
        let now = crate::feeds::saved::now_unix();
        let monitor = new.monitor || config.monitor;
        if new.rules != self.settings.rules || monitor != self.monitor {
            let memory = self.judge.memory();
            self.judge = Judge::new(new.rules.clone(), monitor);
            self.judge.remember(memory, now);
            self.judge
                .in_force(state.bans.values().map(|b| b.until).collect());
            self.monitor = monitor;
        }
        let mut note = None;
        if new.policy_listen != self.settings.policy_listen {
            log::warn!("bans.policy_listen changes take effect at the next start");
            note = Some("bans.policy_listen waits for the next start".to_string());
        }
        if new.enabled != self.settings.enabled && self.inbox.is_none() {
            log::warn!("bans.enabled takes effect at the next start");
            note = Some("bans.enabled waits for the next start".to_string());
        }
        let sources_changed =
            new.files != self.settings.files || new.journal != self.settings.journal;
        let enabled = new.enabled;
        let policy_listen = self.settings.policy_listen;
        self.settings = new.clone();
        self.settings.policy_listen = policy_listen;
        if !enabled {
            self.logs = None;
        } else if sources_changed || self.logs.is_none() {
            self.logs = None;
            self.start_logs(state);
        }
        note
    }

    /// Counts every batch waiting, and adds the bans the rules decide to `state`. `spare`
    /// says which nets must not be banned.
    pub fn drain(
        &mut self,
        state: &mut BanState,
        mx_allow: &AddrList,
        trusted: &AddrList,
        live: &dyn Fn() -> Vec<lockout::Session>,
    ) -> Drained {
        let mut drained = Drained {
            counted: false,
            banned: std::mem::take(&mut self.unwritten),
            first_read: None,
            new_bans: Vec::new(),
        };
        let Some(inbox) = &self.inbox else {
            return drained;
        };
        let batches: Vec<Batch> = inbox.drain();
        if batches.is_empty() || !self.settings.enabled {
            // Turned off by a reload: what the policy server still reports is not counted.
            return drained;
        }
        drained.counted = true;
        let now = crate::feeds::saved::now_unix();
        if self.surroundings.is_none() {
            self.refresh_surroundings(live);
        }
        let around = self.surroundings.as_ref().expect("just read");
        let auth_from_policy = self.settings.auth_from_policy();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        for batch in batches {
            for parsed in &batch.parsed {
                let event = match parsed {
                    Parsed::Unknown => {
                        *counts.lines.entry("unknown".into()).or_default() += 1;
                        continue;
                    }
                    Parsed::Ignored => {
                        *counts.lines.entry("ignored".into()).or_default() += 1;
                        continue;
                    }
                    Parsed::Event(e) => e,
                };
                if batch.kind != SourceKind::Policy {
                    if auth_from_policy && event.kind == EventKind::AuthFailed {
                        *counts.lines.entry("duplicate".into()).or_default() += 1;
                        continue;
                    }
                    *counts.lines.entry("event".into()).or_default() += 1;
                }
                *counts
                    .events
                    .entry(format!("{}/{}", batch.kind.name(), event.kind.name()))
                    .or_default() += 1;
                let spare = |net: &IpNet| spare::why(net, around, mx_allow, trusted);
                for verdict in self.judge.observe(event, now, &spare) {
                    match verdict {
                        Verdict::Ban {
                            net,
                            seconds,
                            rule,
                            strike,
                        } => {
                            log::warn!(
                                "bans: {net} banned for {} by rule {rule} (offence {strike}, {} from {})",
                                crate::config::durations::human_duration(seconds),
                                event.kind.name(),
                                batch.kind.name(),
                            );
                            *counts.bans.entry(rule.clone()).or_default() += 1;
                            let until = now.saturating_add(seconds);
                            drained
                                .new_bans
                                .push(crate::feeds::crowdsec::agent::Finding {
                                    net,
                                    rule: rule.clone(),
                                    since: now,
                                    seconds,
                                    what: format!("banned by rule {rule} (offence {strike})"),
                                });
                            self.recent.push(RecentBan {
                                net,
                                rule: rule.clone(),
                                at: now,
                                until: Some(until),
                                spared: None,
                            });
                            state.bans.insert(
                                net,
                                Ban {
                                    rule,
                                    origin: event.kind.name().to_string(),
                                    since: now,
                                    until,
                                    strike,
                                },
                            );
                            drained.banned = true;
                            drained.first_read = Some(
                                drained
                                    .first_read
                                    .map_or(batch.read_at, |t| t.min(batch.read_at)),
                            );
                        }
                        Verdict::Spared { net, rule, why } => {
                            log::warn!(
                                "bans: rule {rule} fired for {net} ({} from {}), NOT banned: {}",
                                event.kind.name(),
                                batch.kind.name(),
                                spare::explain(why),
                            );
                            *counts
                                .spared
                                .entry(format!("{rule}/{}", why.name()))
                                .or_default() += 1;
                            self.recent.push(RecentBan {
                                net,
                                rule,
                                at: now,
                                until: None,
                                spared: Some(why.name().to_string()),
                            });
                        }
                    }
                }
            }
            match batch.position {
                Position::File(path, checkpoint) => {
                    state.files.insert(path, checkpoint);
                }
                Position::Journal(cursor) => state.journal_cursor = Some(cursor),
                Position::Live => {}
            }
            self.dirty = true;
        }
        drop(counts);
        if self.recent.len() > RECENT {
            let excess = self.recent.len() - RECENT;
            self.recent.drain(..excess);
        }
        if drained.banned {
            self.publish_banned(state);
        }
        drained
    }

    /// Reads the operator's live sessions and the host's addresses again when they are older
    /// than two seconds (the serve loop calls this after counting, off the path of a ban).
    pub fn refresh_surroundings(&mut self, live: &dyn Fn() -> Vec<lockout::Session>) {
        if !self.settings.enabled
            || self
                .surroundings
                .as_ref()
                .is_some_and(|s| s.at.elapsed() < SURROUNDINGS_MAX_AGE)
        {
            return;
        }
        self.surroundings = Some(Surroundings::read(live));
    }

    /// Writing the maps for new bans failed: the next turn writes them again.
    pub fn unwritten(&mut self) {
        self.unwritten = true;
    }

    /// Records the time from event to ban, once the maps hold the bans.
    pub fn banned_in_force(&self, first_read: Instant) {
        let seconds = first_read.elapsed().as_secs_f64();
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        counts.latency_buckets[bucket] += 1;
        counts.latency_sum += seconds;
        counts.latency_count += 1;
    }

    /// The bans in force, as the policy server checks them.
    pub fn publish_banned(&self, state: &BanState) {
        let now = crate::feeds::saved::now_unix();
        let set = BannedSet::new(
            state
                .bans
                .iter()
                .filter(|(_, b)| b.until > now)
                .map(|(n, _)| *n),
        );
        *self.banned.write().unwrap_or_else(|p| p.into_inner()) = set;
    }

    /// Lifts bans on nets the operator now lists as never to be banned (the MX allowlist,
    /// trusted sources): after a start or a reload that added them. Returns what was lifted.
    pub fn lift_exempt(
        &mut self,
        state: &mut BanState,
        mx_allow: &AddrList,
        trusted: &AddrList,
    ) -> Vec<IpNet> {
        let lifted: Vec<IpNet> = state
            .bans
            .keys()
            .filter(|n| spare::overlaps(mx_allow, n) || spare::overlaps(trusted, n))
            .copied()
            .collect();
        for net in &lifted {
            log::warn!("bans: lifted the ban on {net}: it is in the MX allowlist or trusted now");
        }
        if !lifted.is_empty() {
            self.pardon(state, &lifted);
        }
        lifted
    }

    /// The operator lifted bans (`mailguard block del`).
    pub fn pardon(&mut self, state: &mut BanState, nets: &[IpNet]) {
        let now = crate::feeds::saved::now_unix();
        for net in nets {
            if state.bans.remove(net).is_some() {
                self.judge.pardon(net, now);
                self.dirty = true;
            }
        }
        self.judge
            .in_force(state.bans.values().map(|b| b.until).collect());
        self.publish_banned(state);
    }

    /// Saves `state` (with the rules' counts) when it changed, at most every second unless
    /// `now` is asked for.
    pub fn save(&mut self, state: &mut BanState, state_dir: &std::path::Path, force: bool) {
        if !self.dirty || (!force && self.last_save.elapsed() < SAVE_EVERY) {
            return;
        }
        state.memory = self.judge.memory();
        if let Err(e) = state.save(state_dir) {
            log::error!("bans: {e}");
        }
        state.memory = Default::default();
        self.dirty = false;
        self.last_save = Instant::now();
    }

    /// A ban expired or was lifted: the file needs saving.
    pub fn touched(&mut self) {
        self.dirty = true;
    }

    pub fn summary(&self, state: &BanState) -> BanSummary {
        let now = crate::feeds::saved::now_unix();
        let by_rule = state.by_rule(now);
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(p) = &self.policy {
            let c: &PolicyCounts = &p.counts;
            use std::sync::atomic::Ordering::Relaxed;
            for (k, v) in [
                ("policy_allowed", c.allowed.load(Relaxed)),
                ("policy_refused", c.refused.load(Relaxed)),
                ("policy_reports", c.reports.load(Relaxed)),
                ("policy_bad", c.bad.load(Relaxed)),
            ] {
                counts.lines.insert(k.into(), v);
            }
        }
        BanSummary {
            active: by_rule.values().sum(),
            active_by_rule: by_rule,
            sources: self.sources(),
            monitor: self.monitor,
            counts,
            recent: self.recent.clone(),
            tracked: self.judge.tracked(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }
}
