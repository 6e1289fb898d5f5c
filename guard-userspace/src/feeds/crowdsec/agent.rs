//! The agent's thread: mailguard's own bans, pushed to the LAPI as alerts with a ban decision
//! each (origin `mailguard`, scenario `mailguard/RULE`), as a CrowdSec machine, so that every
//! bouncer of the fleet blocks them. Findings wait in a bounded queue while the LAPI is away
//! (the oldest are dropped first, counted) and are sent again with backoff.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, mpsc},
    thread,
    time::Duration,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    config::crowdsec::Crowdsec,
    feeds::crowdsec::lapi::{LapiError, Machine},
    feeds::saved::now_unix,
};

/// One ban to share.
#[derive(Debug, Clone)]
pub struct Finding {
    pub net: IpNet,
    pub rule: String,
    /// Unix seconds.
    pub since: u64,
    pub seconds: u64,
    /// What the source did, for the alert's message ("banned by rule auth (offence 2)").
    pub what: String,
}

/// What the agent did, for `status` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStats {
    pub pushed: u64,
    pub failures: u64,
    /// Findings dropped from a full queue while the LAPI was away.
    pub dropped: u64,
    pub queued: usize,
    pub last_push: Option<u64>,
    pub last_error: Option<String>,
}

/// Findings kept at most while the LAPI is away.
const QUEUE: usize = 10_000;
/// Alerts in one request at most.
const BATCH: usize = 100;
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The daemon's side: hands findings to the thread (ended on drop).
pub struct Agent {
    tx: mpsc::Sender<Finding>,
    pub stats: Arc<Mutex<AgentStats>>,
}

impl Agent {
    pub fn start(config: &Crowdsec) -> Result<Agent, LapiError> {
        let machine = Machine::new(config)?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(AgentStats::default()));
        let shared = stats.clone();
        let retry = Duration::from_secs(config.poll_interval);
        thread::Builder::new()
            .name("crowdsec-agent".into())
            .spawn(move || run(machine, &rx, &shared, retry))
            .map_err(|e| LapiError::Unreachable {
                url: config.lapi_url.clone(),
                reason: format!("cannot start the agent thread: {e}"),
            })?;
        Ok(Agent { tx, stats })
    }

    pub fn share(&self, finding: Finding) {
        let _ = self.tx.send(finding);
    }

    pub fn stats(&self) -> AgentStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-06T04:26:03Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The alert CrowdSec's LAPI takes for one finding.
pub fn alert(f: &Finding, host: &str) -> serde_json::Value {
    let single = f.net.prefix_len() == f.net.max_prefix_len();
    let (scope, value) = if single {
        ("Ip", f.net.addr().to_string())
    } else {
        ("Range", f.net.to_string())
    };
    let scenario = format!("mailguard/{}", f.rule);
    let at = rfc3339(f.since);
    let mut source = serde_json::json!({ "scope": scope, "value": value });
    if single {
        source["ip"] = value.clone().into();
    } else {
        source["range"] = value.clone().into();
    }
    serde_json::json!({
        "scenario": scenario,
        "scenario_hash": "",
        "scenario_version": "",
        "message": format!("mailguard on {host}: {} {}", f.net, f.what),
        "events_count": 1,
        "start_at": at,
        "stop_at": at,
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "events": [],
        "source": source,
        "decisions": [{
            "origin": "mailguard",
            "type": "ban",
            "scope": scope,
            "value": value,
            "duration": format!("{}s", f.seconds),
            "scenario": scenario,
        }],
    })
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

fn run(
    mut machine: Machine,
    rx: &mpsc::Receiver<Finding>,
    stats: &Mutex<AgentStats>,
    retry: Duration,
) {
    let host = host_name();
    let mut queue: VecDeque<Finding> = VecDeque::new();
    let mut failures: u32 = 0;
    loop {
        // Waits for a finding (or, with findings waiting after a failure, for the backoff).
        let wait = if queue.is_empty() {
            None
        } else {
            Some(
                retry
                    .saturating_mul(1 << failures.min(16).saturating_sub(1))
                    .min(MAX_BACKOFF),
            )
        };
        let first = match wait {
            None => match rx.recv() {
                Ok(f) => Some(f),
                Err(_) => return,
            },
            Some(d) => match rx.recv_timeout(d) {
                Ok(f) => Some(f),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut dropped = 0;
        for f in first.into_iter().chain(rx.try_iter()) {
            if queue.len() >= QUEUE {
                queue.pop_front();
                dropped += 1;
            }
            queue.push_back(f);
        }
        while !queue.is_empty() {
            let n = queue.len().min(BATCH);
            let alerts: Vec<serde_json::Value> =
                queue.iter().take(n).map(|f| alert(f, &host)).collect();
            let result = machine.push(&alerts);
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            s.dropped += dropped;
            dropped = 0;
            match result {
                Ok(()) => {
                    queue.drain(..n);
                    failures = 0;
                    s.pushed += n as u64;
                    s.last_push = Some(now_unix());
                    s.last_error = None;
                    s.queued = queue.len();
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    s.failures += 1;
                    s.queued = queue.len();
                    log::warn!(
                        "crowdsec: pushing {} ban(s) to the LAPI failed ({e}); they wait and are sent again",
                        queue.len()
                    );
                    s.last_error = Some(e.to_string());
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_531_163), "2026-12-06T04:26:03Z");
    }

    #[test]
    fn an_alert_carries_one_ban_decision() {
        let f = Finding {
            net: "198.18.0.66/32".parse().unwrap(),
            rule: "auth".into(),
            since: 1_796_531_163,
            seconds: 600,
            what: "banned by rule auth (offence 1)".into(),
        };
        let a = alert(&f, "mx1");
        assert_eq!(a["scenario"], "mailguard/auth");
        assert_eq!(a["source"]["scope"], "Ip");
        assert_eq!(a["source"]["ip"], "198.18.0.66");
        assert_eq!(a["decisions"][0]["value"], "198.18.0.66");
        assert_eq!(a["decisions"][0]["duration"], "600s");
        assert_eq!(a["decisions"][0]["origin"], "mailguard");
        assert_eq!(a["start_at"], "2026-12-06T04:26:03Z");
        assert_eq!(
            a["message"],
            "mailguard on mx1: 198.18.0.66/32 banned by rule auth (offence 1)"
        );
        let net = Finding {
            net: "2001:db8:66::/64".parse().unwrap(),
            rule: "auth_net".into(),
            ..f.clone()
        };
        let a = alert(&net, "mx1");
        assert_eq!(a["source"]["scope"], "Range");
        assert_eq!(a["source"]["range"], "2001:db8:66::/64");
        assert_eq!(a["decisions"][0]["scope"], "Range");
    }
}
