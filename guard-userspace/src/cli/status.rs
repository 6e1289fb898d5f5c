//! `mailguard status`: what is attached where, and the packet counters by reason.

use std::fmt::Write as _;

use guard_common::{Reason, SETTING_ECHO_ALLOW, SETTING_MONITOR, Settings, Verdict};
use serde::Serialize;

use crate::{
    cli::list_view::{self, ListStatus},
    config::durations::human_duration,
    daemon::bans::BanSummary,
    daemon::budget_view::BudgetView,
    daemon::crowdsec::CrowdsecSummary,
    daemon::state::RunState,
    kernel::guard::Counters,
};

#[derive(Serialize)]
pub struct Status {
    /// Whether the daemon runs. Without it the pinned programs keep protecting the host.
    pub running: bool,
    pub pid: u32,
    pub interface: String,
    pub mode: String,
    pub monitor: bool,
    pub icmp_echo: &'static str,
    pub program_id: u32,
    pub verified_instructions: Option<u32>,
    /// Whether the XDP program is on the interface. False when the interface went away: then
    /// nothing is guarded until it is back (the daemon attaches again then).
    pub attached: bool,
    /// Since when (Unix seconds) it is not attached.
    pub detached_since: Option<u64>,
    /// The running kernel's release.
    pub kernel: String,
    /// What this kernel lacks that mailguard does without, and what is lost.
    pub kernel_degraded: Vec<String>,
    pub uptime_seconds: u64,
    /// Every reason, in counter order.
    pub counters: Vec<ReasonCount>,
    pub passed: u64,
    pub dropped: u64,
    /// Packets answered with a TCP RST (the `reject` action).
    pub rejected: u64,
    /// SYNs answered in XDP with a SYN cookie.
    pub answered: u64,
    /// SYN cookies from XDP, when on.
    pub syn_cookies: Option<crate::daemon::state::SynCookieState>,
    /// The budgets in force and what they decided.
    pub budgets: BudgetView,
    /// MX-only mode: port 25 accepts only the `mx_allow` list.
    pub mx_only: bool,
    /// The lists: sizes, refresh status, packets decided.
    pub lists: Vec<ListStatus>,
    /// The bans from the mail logs, when enabled.
    pub bans: Option<BanSummary>,
    /// The CrowdSec bouncer, when `[crowdsec]` is enabled (or its decisions still in force).
    pub crowdsec: Option<CrowdsecSummary>,
    /// Seconds since the Unix epoch when this status was taken.
    pub now: u64,
}

#[derive(Serialize)]
pub struct ReasonCount {
    pub reason: &'static str,
    /// The verdict of the policy ("pass" or "drop"); in monitor mode drops are only counted.
    pub verdict: &'static str,
    pub packets: u64,
    pub description: &'static str,
}

impl Status {
    pub fn new(
        state: RunState,
        settings: Settings,
        counters: &Counters,
        budgets: BudgetView,
        now: u64,
    ) -> Status {
        let monitor = settings.has(SETTING_MONITOR);
        let lists = state
            .lists
            .iter()
            .map(|l| {
                let packets = counters.get(list_view::reason_of(l.list));
                ListStatus::of(l.clone(), Some(packets), Some(settings.index))
            })
            .collect();
        let counters: Vec<ReasonCount> = Reason::ALL
            .iter()
            .map(|&r| ReasonCount {
                reason: r.name(),
                verdict: r.verdict_label(),
                packets: counters.get(r),
                description: r.describe(),
            })
            .collect();
        let sum = |v: Verdict| {
            counters
                .iter()
                .filter(|c| c.verdict == v.name())
                .map(|c| c.packets)
                .sum()
        };
        Status {
            bans: state.bans.clone(),
            crowdsec: state.crowdsec.clone(),
            mx_only: state.mx_only,
            lists,
            now,
            running: state.daemon_alive(),
            pid: state.pid,
            interface: state.interface,
            mode: state.mode,
            monitor,
            icmp_echo: if settings.has(SETTING_ECHO_ALLOW) {
                "allow"
            } else {
                "drop"
            },
            program_id: state.program_id,
            verified_instructions: state.verified_instructions,
            attached: state.detached_since.is_none(),
            detached_since: state.detached_since,
            kernel: state.kernel,
            kernel_degraded: state.kernel_degraded,
            uptime_seconds: now.saturating_sub(state.started),
            passed: sum(Verdict::Pass),
            dropped: sum(Verdict::Drop),
            rejected: sum(Verdict::Tx),
            answered: counters
                .iter()
                .filter(|c| c.verdict == "answer")
                .map(|c| c.packets)
                .sum(),
            syn_cookies: state.syn_cookies.clone(),
            budgets,
            counters,
        }
    }

    /// The human-readable table. Reasons with no packets are left out unless `all`.
    pub fn render(&self, all: bool) -> String {
        let mut out = String::new();
        let enforcing = if self.monitor {
            "MONITOR mode (counting only, nothing dropped)"
        } else {
            "enforcing"
        };
        let _ = writeln!(
            out,
            "mailguard on {} ({} XDP), {enforcing}\n{}, program id {}, up {}, ping {}",
            self.interface,
            self.mode,
            if self.running {
                format!("daemon running (pid {})", self.pid)
            } else {
                "daemon NOT running: the pinned programs keep protecting; `mailguard run` adopts them".to_string()
            },
            self.program_id,
            human_duration(self.uptime_seconds),
            self.icmp_echo,
        );
        if !self.attached {
            let _ = writeln!(
                out,
                "NOT ATTACHED{}: {} went away and nothing is guarded; {}",
                self.detached_since.map_or(String::new(), |since| format!(
                    " since {} ago",
                    human_duration(self.now.saturating_sub(since))
                )),
                self.interface,
                if self.running {
                    "the daemon attaches again when it is back"
                } else {
                    "start the daemon (`mailguard run`) to attach again"
                }
            );
        }
        for lost in &self.kernel_degraded {
            let _ = writeln!(out, "kernel {} has {lost}", self.kernel);
        }
        let drop_label = if self.monitor { "would drop" } else { "drop" };
        let _ = writeln!(
            out,
            "\n{:<24} {:<12} {:>12}  MEANING",
            "REASON", "VERDICT", "PACKETS"
        );
        for c in self.counters.iter().filter(|c| all || c.packets > 0) {
            let verdict = match c.verdict {
                "drop" => drop_label,
                "reject" if self.monitor => "would reject",
                "answer" if self.monitor => "would answer",
                v => v,
            };
            let _ = writeln!(
                out,
                "{:<24} {:<12} {:>12}  {}",
                c.reason, verdict, c.packets, c.description
            );
        }
        let (dropped, rejected) = if self.monitor {
            ("would have dropped", "would have rejected")
        } else {
            ("dropped", "rejected")
        };
        let _ = writeln!(
            out,
            "\npassed {}, {dropped} {}, {rejected} {} (with a TCP RST){}",
            self.passed,
            self.dropped,
            self.rejected,
            if self.syn_cookies.is_some() || self.answered > 0 {
                format!(", answered {} with a SYN cookie", self.answered)
            } else {
                String::new()
            }
        );
        if let Some(c) = &self.syn_cookies {
            let _ = writeln!(
                out,
                "SYN cookies: {}, {}{}",
                c.mode,
                if c.timestamps {
                    "with timestamps (window scale and SACK kept)"
                } else {
                    "MSS only (net.ipv4.tcp_timestamps is not 2: no window scale or SACK for those connections)"
                },
                cookie_situation(c)
            );
        }
        out.push_str(&self.budgets.render());
        out.push_str(&list_view::render_summaries(
            &self.lists,
            self.mx_only,
            self.now,
        ));
        if let Some(bans) = &self.bans {
            out.push_str(&render_bans(bans, self.now));
        }
        if let Some(c) = &self.crowdsec {
            out.push_str(&render_crowdsec(c, self.now));
        }
        out
    }
}

/// The CrowdSec section of `status`.
pub fn render_crowdsec(c: &CrowdsecSummary, now: u64) -> String {
    let mut out = String::new();
    let total: usize = c.by_origin.values().sum();
    let origins = c
        .by_origin
        .iter()
        .map(|(o, n)| format!("{o} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "\ncrowdsec: {total} decisions in force{} from {}",
        if origins.is_empty() {
            String::new()
        } else {
            format!(" ({origins})")
        },
        c.lapi_url
    );
    let _ = writeln!(
        out,
        "  last sync: {}; syncs {} full, {} delta; failures {}{}",
        c.last_sync.map_or("never".to_string(), |t| format!(
            "{} ago",
            human_duration(now.saturating_sub(t))
        )),
        c.full_syncs,
        c.delta_syncs,
        c.failures,
        if c.failures_in_a_row > 0 {
            format!(" ({} in a row)", c.failures_in_a_row)
        } else {
            String::new()
        },
    );
    if let Some(e) = &c.last_error {
        let _ = writeln!(out, "  last error: {e}");
    }
    if let Some(a) = &c.agent {
        let _ = writeln!(
            out,
            "  this host's bans pushed: {}, waiting {}, failed pushes {}{}",
            a.pushed,
            a.queued,
            a.failures,
            a.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" (last: {e})"))
        );
    }
    let spared: u64 = c.spared.values().sum();
    if spared + c.not_taken + c.bad > 0 {
        let _ = writeln!(
            out,
            "  not enforced: {spared} spared (must never be blocked), {} not for mailguard, {} unreadable",
            c.not_taken, c.bad
        );
    }
    out
}

/// The bans section of `status` (and of `top`).
pub fn render_bans(bans: &BanSummary, now: u64) -> String {
    let mut out = String::new();
    let rules = bans
        .active_by_rule
        .iter()
        .map(|(r, n)| format!("{r} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "
bans{}: {} in force{} from {}",
        if bans.monitor {
            " (MONITOR: rules fire, nobody is banned)"
        } else {
            ""
        },
        bans.active,
        if rules.is_empty() {
            String::new()
        } else {
            format!(" ({rules})")
        },
        if bans.sources.is_empty() {
            "no source".to_string()
        } else {
            bans.sources.join(", ")
        },
    );
    let c = &bans.counts;
    let sum = |m: &std::collections::BTreeMap<String, u64>| m.values().sum::<u64>();
    let _ = writeln!(
        out,
        "  events {}, bans {}, spared {}; log lines of unknown shape {}",
        sum(&c.events),
        sum(&c.bans),
        sum(&c.spared),
        c.lines.get("unknown").copied().unwrap_or(0),
    );
    if c.latency_count > 0 {
        let _ = writeln!(
            out,
            "  event to ban: {:.1} ms on average over {} bans",
            c.latency_sum * 1000.0 / c.latency_count as f64,
            c.latency_count
        );
    }
    for r in bans.recent.iter().rev().take(10) {
        let ago = human_duration(now.saturating_sub(r.at));
        let _ = match (&r.until, &r.spared) {
            (Some(until), _) => writeln!(
                out,
                "  {ago:>7} ago  {:<28} banned by {} for {}",
                r.net.to_string(),
                r.rule,
                human_duration(until.saturating_sub(r.at))
            ),
            (None, why) => writeln!(
                out,
                "  {ago:>7} ago  {:<28} {} fired, NOT banned: {}",
                r.net.to_string(),
                r.rule,
                why.as_deref().unwrap_or("?")
            ),
        };
    }
    out
}

/// The end of the `SYN cookies:` line of `status`: whether any are made, a flood, and what
/// mailguard did to `net.ipv4.tcp_syncookies` and the listeners.
fn cookie_situation(c: &crate::daemon::state::SynCookieState) -> String {
    let hold = crate::config::durations::human_duration(c.hold);
    if let Some(p) = &c.problem {
        return format!("; NONE MADE: {p}: SYNs over the ceiling are dropped");
    }
    let setting = match c.tcp_syncookies_was {
        Some(was) => {
            format!("net.ipv4.tcp_syncookies set to {{}} (it was {was}, put back at unload)")
        }
        None => "net.ipv4.tcp_syncookies as the operator set it".to_string(),
    };
    if c.raw {
        let setting = setting.replace("{}", "1");
        let marked = if c.marked.is_empty() {
            "no listener marked yet".to_string()
        } else {
            format!(
                "made in XDP from the SYN alone; the listeners on ports {} are marked as sending cookies (again every minute)",
                c.marked
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return match (c.mode.as_str(), c.flood) {
            ("under_flood", false) => format!(
                "; no SYN flood: {setting}; made in XDP from the SYN alone once SYNs go over the ceiling"
            ),
            ("under_flood", true) => format!(
                "; UNDER A SYN FLOOD (until {hold} after the last SYN over the ceiling): {marked}; {setting}"
            ),
            _ => format!("; {marked}; {setting}"),
        };
    }
    let setting = setting.replace("{}", "2");
    match (c.mode.as_str(), c.flood, c.tcp_syncookies_was) {
        ("under_flood", false, _) => {
            "; no SYN flood: net.ipv4.tcp_syncookies as the operator set it (2 while SYNs go over the ceiling)"
                .to_string()
        }
        (_, true, Some(was)) => format!(
            "; UNDER A SYN FLOOD: net.ipv4.tcp_syncookies set to 2 (it was {was}; put back {hold} after the last SYN over the ceiling, and at unload)"
        ),
        (_, true, None) => {
            "; UNDER A SYN FLOOD (net.ipv4.tcp_syncookies was already 2)".to_string()
        }
        (_, false, Some(_)) => format!("; {setting}"),
        (_, false, None) => String::new(),
    }
}
