//! The daemon's side of CrowdSec: it starts the bouncer thread (`feeds::crowdsec::bouncer`),
//! takes each answer of the LAPI's stream into the decision set the block list merges
//! (`ListKeeper::crowdsec`), sparing what must never be blocked, and keeps what `status` and the
//! metrics show: the last sync, failures, decisions by origin. The serve loop writes the maps
//! after each answer, make-before-break: when they cannot take the new set (a set larger than
//! the block list), the set in force stays, whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    config::crowdsec::Crowdsec,
    daemon::{
        lockout,
        spare::{self, Surroundings},
    },
    feeds::crowdsec::{
        agent::{Agent, AgentStats, Finding},
        bouncer::{Bouncer, Report},
        decisions::{DecisionSet, StreamAnswer},
    },
    feeds::saved::now_unix,
    kernel::policy::AddrList,
};

/// What `status` and the metrics show of the bouncer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CrowdsecSummary {
    pub lapi_url: String,
    /// Unix seconds of the last answer taken into the maps.
    pub last_sync: Option<u64>,
    /// Failed reads (and refused answers) since the daemon started, and since the last sync.
    pub failures: u64,
    pub failures_in_a_row: u64,
    pub last_error: Option<String>,
    /// Answers read: full ones, deltas.
    pub full_syncs: u64,
    pub delta_syncs: u64,
    /// Decisions in force, by origin.
    pub by_origin: BTreeMap<String, usize>,
    /// Decisions not enforced because they would block what must never be (by why), not for
    /// mailguard (another type, scope or origin), or that made no sense.
    pub spared: BTreeMap<String, u64>,
    pub not_taken: u64,
    pub bad: u64,
    /// Seconds the last answer took from request to maps.
    pub last_apply_seconds: f64,
    /// The agent (mailguard's bans pushed to the LAPI), when `machine_id` is set.
    pub agent: Option<AgentStats>,
}

/// An answer to apply: the set it makes.
pub struct Pending {
    pub full: bool,
    pub at: u64,
    pub took: std::time::Duration,
    /// The set it makes; `None`: it changes nothing (an empty delta).
    pub next: Option<DecisionSet>,
}

pub struct CrowdsecKeeper {
    pub settings: Crowdsec,
    bouncer: Option<Bouncer>,
    agent: Option<Agent>,
    pub summary: CrowdsecSummary,
    /// The maps refused an answer, and no full answer has been taken since: deltas are left
    /// out until one is (they build on the refused answer, and the full read holds them too),
    /// and the refusal stays in `summary` (an empty delta taken would clear it while the
    /// LAPI's decisions are still not in force).
    awaiting_full: bool,
}

impl CrowdsecKeeper {
    /// Starts the bouncer when `[crowdsec]` is enabled. A key or CA file that cannot be read
    /// is reported; the decisions saved from before stay in force meanwhile.
    pub fn start(settings: &Crowdsec) -> CrowdsecKeeper {
        let mut keeper = CrowdsecKeeper {
            settings: settings.clone(),
            bouncer: None,
            agent: None,
            summary: CrowdsecSummary {
                lapi_url: settings.lapi_url.clone(),
                ..CrowdsecSummary::default()
            },
            awaiting_full: false,
        };
        keeper.start_bouncer();
        keeper
    }

    fn start_bouncer(&mut self) {
        self.bouncer = None;
        self.agent = None;
        if !self.settings.enabled {
            return;
        }
        if self.settings.agent() {
            match Agent::start(&self.settings) {
                Ok(a) => {
                    log::info!(
                        "crowdsec: pushing this host's bans to {} as machine {}",
                        self.settings.lapi_url,
                        self.settings.machine_id
                    );
                    self.agent = Some(a);
                }
                Err(e) => log::error!("crowdsec: bans not shared: {e}"),
            }
        }
        match Bouncer::start(&self.settings) {
            Ok(b) => {
                log::info!(
                    "crowdsec: reading decisions from {} every {}s",
                    self.settings.lapi_url,
                    self.settings.poll_interval
                );
                self.bouncer = Some(b);
            }
            Err(e) => {
                log::error!("crowdsec: {e}; the decisions in force stay");
                self.failed(e.to_string());
            }
        }
    }

    /// A reload: the bouncer (and the agent) start again, reading the key and password files
    /// again (a rotated key takes effect), with the settings now in force.
    pub fn reload(&mut self, settings: &Crowdsec) -> Option<String> {
        if *settings == self.settings && !settings.enabled {
            return None;
        }
        self.settings = settings.clone();
        self.summary.lapi_url = settings.lapi_url.clone();
        self.start_bouncer();
        Some(if settings.enabled {
            format!("crowdsec: reading {}", settings.lapi_url)
        } else {
            "crowdsec: off (the decisions in force stay until they expire)".into()
        })
    }

    pub fn fd(&self) -> Option<std::os::fd::RawFd> {
        self.bouncer.as_ref().map(Bouncer::fd)
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn failed(&mut self, error: String) {
        self.summary.failures += 1;
        self.summary.failures_in_a_row += 1;
        self.summary.last_error = Some(error);
    }

    /// The answers waiting, each turned into the set it makes from `current` (the set in
    /// force), decisions on what must never be blocked left out and logged. Failures are
    /// logged and counted here. Also says whether anything came (the summary changed).
    pub fn drain(
        &mut self,
        current: &DecisionSet,
        mx_allow: &AddrList,
        trusted: &AddrList,
        live: &dyn Fn() -> Vec<lockout::Session>,
    ) -> (Vec<Pending>, bool) {
        let Some(bouncer) = &self.bouncer else {
            return (Vec::new(), false);
        };
        let reports = bouncer.drain();
        let came = !reports.is_empty();
        let mut out: Vec<Pending> = Vec::new();
        for report in reports {
            match report {
                Report::Failed {
                    error,
                    at: _,
                    retry_in,
                } => {
                    log::warn!(
                        "crowdsec: {error}; the decisions in force stay, next attempt in {}s",
                        retry_in.as_secs()
                    );
                    self.failed(error.to_string());
                }
                Report::Answer { full: false, .. } if self.awaiting_full => {
                    log::debug!("crowdsec: a delta left out: the next full read follows a refusal");
                }
                Report::Answer {
                    answer,
                    full,
                    at,
                    took,
                } => {
                    let base = out
                        .iter()
                        .rev()
                        .find_map(|p| p.next.as_ref())
                        .unwrap_or(current);
                    let around = Surroundings::read(live);
                    let pending =
                        self.take(base, answer, full, at, took, &around, mx_allow, trusted);
                    out.push(pending);
                }
            }
        }
        (out, came)
    }

    #[allow(clippy::too_many_arguments, reason = "one answer and what spares")]
    fn take(
        &mut self,
        base: &DecisionSet,
        mut answer: StreamAnswer,
        full: bool,
        at: u64,
        took: std::time::Duration,
        around: &Surroundings,
        mx_allow: &AddrList,
        trusted: &AddrList,
    ) -> Pending {
        self.summary.not_taken += answer.not_taken as u64;
        self.summary.bad += answer.bad_count as u64;
        if answer.bad_count > 0 {
            log::warn!(
                "crowdsec: {} decision(s) skipped as unreadable: {}",
                answer.bad_count,
                answer.bad.join("; ")
            );
        }
        let mut spared = Vec::new();
        answer
            .new
            .retain(|_, d| match spare::why(&d.net, around, mx_allow, trusted) {
                Some(why) => {
                    spared.push((d.net, why));
                    false
                }
                None => true,
            });
        for (net, why) in &spared {
            log::warn!(
                "crowdsec: a decision on {net} is NOT enforced: {}",
                spare::explain(*why)
            );
            *self
                .summary
                .spared
                .entry(why.name().to_string())
                .or_default() += 1;
        }
        // An empty delta (most answers) changes nothing: no copy of the set.
        let next = (full || !answer.new.is_empty() || !answer.deleted.is_empty()).then(|| {
            let mut next = base.clone();
            next.apply(&answer, full);
            next
        });
        Pending {
            full,
            at,
            took,
            next,
        }
    }

    /// The maps took a pending answer; `set`: the decisions in force now.
    pub fn applied(
        &mut self,
        pending: &Pending,
        set: &DecisionSet,
        applied_in: std::time::Duration,
    ) {
        if pending.full {
            self.awaiting_full = false;
        }
        let s = &mut self.summary;
        s.last_sync = Some(pending.at);
        s.failures_in_a_row = 0;
        s.last_error = None;
        if pending.full {
            s.full_syncs += 1;
        } else {
            s.delta_syncs += 1;
        }
        s.by_origin = set.by_origin(now_unix());
        s.last_apply_seconds = (pending.took + applied_in).as_secs_f64();
    }

    /// The maps refused a pending answer (`why`): the set in force stays, and the bouncer reads
    /// everything again after its backoff.
    pub fn refused(&mut self, why: String) {
        log::error!(
            "crowdsec: the LAPI's decisions were NOT applied: {why}; the decisions in force stay, whole"
        );
        self.failed(why);
        self.awaiting_full = true;
        if let Some(b) = &self.bouncer {
            b.refused(self.summary.failures_in_a_row);
        }
    }

    /// New bans of this host: those of the rules `share` names go to the LAPI.
    pub fn share(&self, bans: Vec<Finding>) {
        let Some(agent) = &self.agent else { return };
        for f in bans.into_iter().filter(|f| self.settings.shares(&f.rule)) {
            agent.share(f);
        }
    }

    /// Sources the budgets refused (`share_refused`): all go to the LAPI.
    pub fn share_refused(&self, found: Vec<Finding>) {
        if let Some(agent) = &self.agent {
            found.into_iter().for_each(|f| agent.share(f));
        }
    }

    /// What `status` shows, the agent's counts included.
    pub fn summary(&self) -> CrowdsecSummary {
        CrowdsecSummary {
            agent: self.agent.as_ref().map(Agent::stats),
            ..self.summary.clone()
        }
    }

    /// Decisions expired or lifted: the origins' counts again.
    pub fn recount(&mut self, set: &DecisionSet) {
        self.summary.by_origin = set.by_origin(now_unix());
    }
}
