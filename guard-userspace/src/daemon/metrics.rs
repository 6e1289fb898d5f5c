//! Prometheus metrics on `GET /metrics`, read from the pinned maps at scrape time and encoded
//! with the official Prometheus client (`prometheus-client`, OpenMetrics text). Names carry the
//! `mailguard_` prefix, counters end in `_total`, and labels come only from small fixed sets
//! (reason, verdict, class, outcome, event, map, interface, mode): never a source address.

use std::{
    net::{SocketAddr, TcpListener},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
};

use guard_common::Reason;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    daemon::bans::{BanSummary, LATENCY_BUCKETS},
    daemon::budget_view::BudgetView,
    daemon::crowdsec::CrowdsecSummary,
    daemon::state::{self, Dirs, RunState},
};

/// What the daemon counts itself (not in any map).
#[derive(Debug, Default)]
pub struct DaemonFacts {
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Unconfirmed reloads rolled back.
    pub rollbacks: AtomicU64,
    /// List refreshes finished (each list's own outcome is in the state file).
    pub list_refreshes: AtomicU64,
}

#[derive(Debug)]
struct MapCollector {
    dirs: Dirs,
    cpus: u32,
    facts: Arc<DaemonFacts>,
}

fn counter<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Counter,
    )?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<L: prometheus_client::encoding::EncodeLabelSet>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

type Labels = Vec<(&'static str, String)>;

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// The bans' series: events by source and kind, log lines by outcome, bans and spared
/// verdicts by rule, bans in force, and the time from event to ban.
fn ban_metrics(enc: &mut DescriptorEncoder, bans: &BanSummary) -> Result<(), std::fmt::Error> {
    let c = &bans.counts;
    counter(
        enc,
        "mailguard_ban_events",
        "events the ban rules counted, by where they came from (journal, file, policy) and what they are (auth, harvest, relay, postscreen)",
        c.events.iter().map(|(k, v)| {
            let (source, event) = k.split_once('/').unwrap_or((k, ""));
            (l(&[("source", source), ("event", event)]), *v)
        }),
    )?;
    counter(
        enc,
        "mailguard_ban_lines",
        "log lines and policy requests read for the bans, by outcome (event, ignored, unknown: a shape not known, duplicate: an auth failure Dovecot's policy reports, policy_allowed, policy_refused, policy_reports, policy_bad)",
        c.lines.iter().map(|(k, v)| (l(&[("outcome", k)]), *v)),
    )?;
    counter(
        enc,
        "mailguard_bans",
        "bans put in force, by the rule that fired",
        c.bans.iter().map(|(k, v)| (l(&[("rule", k)]), *v)),
    )?;
    counter(
        enc,
        "mailguard_bans_spared",
        "rules that fired without banning, by rule and why (local, mx_allow, trusted, live_session, monitor, capped)",
        c.spared.iter().map(|(k, v)| {
            let (rule, why) = k.split_once('/').unwrap_or((k, ""));
            (l(&[("rule", rule), ("why", why)]), *v)
        }),
    )?;
    gauge(
        enc,
        "mailguard_bans_active",
        "bans in force, by rule",
        bans.active_by_rule
            .iter()
            .map(|(k, v)| (l(&[("rule", k)]), *v as f64)),
    )?;
    let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
        .iter()
        .copied()
        .chain([f64::INFINITY])
        .zip(c.latency_buckets.iter().copied())
        .collect();
    let mut family = enc.encode_descriptor(
        "mailguard_ban_latency_seconds",
        "time from reading the event that fired a rule to the ban being in the maps",
        None,
        prometheus_client::metrics::MetricType::Histogram,
    )?;
    family.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        c.latency_sum,
        c.latency_count,
        &buckets,
        None,
    )
}

/// The CrowdSec bouncer's series: decisions in force by origin, syncs and failures, the last
/// sync, and the decisions not enforced.
fn crowdsec_metrics(
    enc: &mut DescriptorEncoder,
    c: &CrowdsecSummary,
) -> Result<(), std::fmt::Error> {
    gauge(
        enc,
        "mailguard_crowdsec_decisions",
        "CrowdSec decisions in force in the block list, by origin (crowdsec, cscli, CAPI, lists, ...)",
        c.by_origin
            .iter()
            .map(|(o, n)| (l(&[("origin", o)]), *n as f64)),
    )?;
    counter(
        enc,
        "mailguard_crowdsec_syncs",
        "answers of the LAPI's decision stream taken into the maps, by kind (full, delta)",
        [
            (l(&[("kind", "full")]), c.full_syncs),
            (l(&[("kind", "delta")]), c.delta_syncs),
        ],
    )?;
    counter(
        enc,
        "mailguard_crowdsec_failures",
        "reads of the LAPI that failed (unreachable, refused key, garbage) or answers the maps refused",
        [(Labels::new(), c.failures)],
    )?;
    gauge(
        enc,
        "mailguard_crowdsec_last_sync_timestamp_seconds",
        "when the last answer of the LAPI was taken into the maps (0: never)",
        [(Labels::new(), c.last_sync.unwrap_or(0) as f64)],
    )?;
    if let Some(a) = &c.agent {
        counter(
            enc,
            "mailguard_crowdsec_pushed",
            "this host's bans pushed to the LAPI as alerts (the agent)",
            [(Labels::new(), a.pushed)],
        )?;
        counter(
            enc,
            "mailguard_crowdsec_push_failures",
            "pushes of this host's bans that failed (the bans wait and are sent again)",
            [(Labels::new(), a.failures)],
        )?;
        gauge(
            enc,
            "mailguard_crowdsec_push_queue",
            "this host's bans waiting to be pushed",
            [(Labels::new(), a.queued as f64)],
        )?;
    }
    counter(
        enc,
        "mailguard_crowdsec_not_enforced",
        "decisions not enforced, by why (local, mx_allow, trusted, live_session: must never be blocked; not_taken: another type, scope or origin; unreadable)",
        c.spared.iter().map(|(w, n)| (l(&[("why", w)]), *n)).chain([
            (l(&[("why", "not_taken")]), c.not_taken),
            (l(&[("why", "unreadable")]), c.bad),
        ]),
    )
}

impl Collector for MapCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build: [(Labels, f64); 1] = [(l(&[("version", env!("CARGO_PKG_VERSION"))]), 1.0)];
        gauge(
            &mut enc,
            "mailguard_build_info",
            "mailguard build (the value is 1)",
            build,
        )?;
        counter(
            &mut enc,
            "mailguard_config_reloads",
            "configuration reloads by result: success, failure (refused or not written), rolled_back (not confirmed in time)",
            [
                (
                    l(&[("result", "success")]),
                    self.facts.reloads_ok.load(Ordering::Relaxed),
                ),
                (
                    l(&[("result", "failure")]),
                    self.facts.reloads_failed.load(Ordering::Relaxed),
                ),
                (
                    l(&[("result", "rolled_back")]),
                    self.facts.rollbacks.load(Ordering::Relaxed),
                ),
            ],
        )?;
        let refreshes: [(Labels, u64); 1] = [(
            Vec::new(),
            self.facts.list_refreshes.load(Ordering::Relaxed),
        )];
        counter(
            &mut enc,
            "mailguard_list_refreshes",
            "refreshes of the lists' files and SPF records finished (periodic and `mailguard lists refresh`)",
            refreshes,
        )?;
        // Everything below comes from the maps; a failed read leaves those series out (the
        // scrape itself still succeeds, and the log says why).
        if let Ok(state) = RunState::read(&self.dirs) {
            let info: [(Labels, f64); 1] = [(
                l(&[("interface", &state.interface), ("mode", &state.mode)]),
                1.0,
            )];
            gauge(
                &mut enc,
                "mailguard_attached_info",
                "where the XDP program is attached (the value is 1)",
                info,
            )?;
            let attached: [(Labels, f64); 1] = [(
                Vec::new(),
                if state.detached_since.is_none() {
                    1.0
                } else {
                    0.0
                },
            )];
            gauge(
                &mut enc,
                "mailguard_attached",
                "1 while the XDP program is on its interface; 0 once the interface went away (nothing is guarded until it is back)",
                attached,
            )?;
            gauge(
                &mut enc,
                "mailguard_detached_since_timestamp_seconds",
                "since when the XDP program is not on its interface (only while it is not)",
                state
                    .detached_since
                    .map(|since| (Labels::new(), since as f64)),
            )?;
            let monitor: [(Labels, f64); 1] = [(Vec::new(), if state.monitor { 1.0 } else { 0.0 })];
            gauge(
                &mut enc,
                "mailguard_monitor_mode",
                "1 when verdicts are only counted, nothing dropped",
                monitor,
            )?;
            let mx_only: [(Labels, f64); 1] = [(Vec::new(), if state.mx_only { 1.0 } else { 0.0 })];
            gauge(
                &mut enc,
                "mailguard_mx_only",
                "1 when port 25 accepts only the mx_allow list",
                mx_only,
            )?;
            gauge(
                &mut enc,
                "mailguard_list_entries",
                "entries of each list in the maps, by address family",
                state.lists.iter().flat_map(|s| {
                    [
                        (
                            l(&[("list", s.list.name()), ("family", "ipv4")]),
                            s.ipv4 as f64,
                        ),
                        (
                            l(&[("list", s.list.name()), ("family", "ipv6")]),
                            s.ipv6 as f64,
                        ),
                    ]
                }),
            )?;
            gauge(
                &mut enc,
                "mailguard_list_last_refresh_timestamp_seconds",
                "when each list's files and SPF records were last fetched successfully (lists with such sources)",
                state.lists.iter().filter_map(|s| {
                    s.last_refresh
                        .map(|t| (l(&[("list", s.list.name())]), t as f64))
                }),
            )?;
            counter(
                &mut enc,
                "mailguard_list_refresh_failures",
                "refreshes of each list that failed or were refused (the last good version stayed)",
                state
                    .lists
                    .iter()
                    .filter(|s| !s.sources.is_empty())
                    .map(|s| (l(&[("list", s.list.name())]), s.refresh_failures)),
            )?;
            if let Some(bans) = &state.bans {
                ban_metrics(&mut enc, bans)?;
            }
            if let Some(c) = &state.crowdsec {
                crowdsec_metrics(&mut enc, c)?;
            }
            if let Some(c) = &state.syn_cookies {
                // The kernel's own counts of the cookies it was handed back (the clients' ACKs
                // to the SYN-ACKs XDP sent, and to its own), in this namespace.
                let tcp_ext = crate::kernel::netstat::tcp_ext;
                counter(
                    &mut enc,
                    "mailguard_syn_cookies_returned",
                    "SYN cookies the kernel was handed back, by outcome: valid (a connection made) or invalid (the kernel's SyncookiesRecv and SyncookiesFailed)",
                    [
                        (l(&[("outcome", "valid")]), tcp_ext("SyncookiesRecv")),
                        (l(&[("outcome", "invalid")]), tcp_ext("SyncookiesFailed")),
                    ],
                )?;
                let problem: [(Labels, f64); 1] =
                    [(Vec::new(), if c.problem.is_some() { 1.0 } else { 0.0 })];
                let flood: [(Labels, f64); 1] = [(Vec::new(), if c.flood { 1.0 } else { 0.0 })];
                gauge(
                    &mut enc,
                    "mailguard_syn_flood",
                    "1 while SYNs go over the SYN ceiling (syn_cookies = \"under_flood\": the mail listeners are marked as sending cookies meanwhile, or before Linux 6.0 net.ipv4.tcp_syncookies is 2)",
                    flood,
                )?;
                let marked: [(Labels, f64); 1] = [(Vec::new(), c.marked.len() as f64)];
                gauge(
                    &mut enc,
                    "mailguard_syn_cookie_ports",
                    "mail ports whose listeners are marked as sending SYN cookies now (Linux 6.0 and later, while cookies are needed)",
                    marked,
                )?;
                gauge(
                    &mut enc,
                    "mailguard_syn_cookies_unavailable",
                    "1 while SYN cookies are on but none can be made (see `mailguard status`)",
                    problem,
                )?;
            }
        }
        match state::pinned_counters(&self.dirs) {
            Ok(counters) => counter(
                &mut enc,
                "mailguard_packets",
                "packets by the reason of their verdict (in monitor mode drops and rejects are only counted)",
                Reason::ALL.iter().map(|r| {
                    (
                        l(&[("reason", r.name()), ("verdict", r.verdict_label())]),
                        counters.get(*r),
                    )
                }),
            )?,
            Err(e) => log::warn!("metrics: counters: {e}"),
        }
        match BudgetView::read(&self.dirs, self.cpus) {
            Ok(view) => {
                counter(
                    &mut enc,
                    "mailguard_budget_decisions",
                    "budget decisions on new connections to mail ports, by class and outcome",
                    view.classes.iter().flat_map(|c| {
                        c.outcomes
                            .iter()
                            .map(|(o, n)| (l(&[("class", c.class), ("outcome", o)]), *n))
                    }),
                )?;
                counter(
                    &mut enc,
                    "mailguard_tracking_events",
                    "connection counting and source tracking events",
                    view.events.iter().map(|(e, n)| (l(&[("event", e)]), *n)),
                )?;
                gauge(
                    &mut enc,
                    "mailguard_connections",
                    "concurrent connections to mail ports counted, by class",
                    view.connections_by_class
                        .iter()
                        .map(|(c, n)| (l(&[("class", c)]), *n as f64)),
                )?;
                let sources: [(Labels, f64); 1] = [(Vec::new(), view.sources_tracked as f64)];
                gauge(
                    &mut enc,
                    "mailguard_tracked_sources",
                    "sources whose rate is tracked",
                    sources,
                )?;
                let fill = |entries: u64, capacity: u32| {
                    if capacity == 0 {
                        0.0
                    } else {
                        entries as f64 / capacity as f64
                    }
                };
                gauge(
                    &mut enc,
                    "mailguard_map_fill_ratio",
                    "entries over capacity of the tracking maps",
                    [
                        (
                            l(&[("map", "sources")]),
                            fill(view.sources_tracked, view.sources_capacity),
                        ),
                        (
                            l(&[("map", "connections")]),
                            fill(view.sources_with_connections, view.connections_capacity),
                        ),
                    ],
                )?;
            }
            Err(e) => log::warn!("metrics: budgets: {e}"),
        }
        Ok(())
    }
}

/// The full metrics text, as served.
pub fn render(dirs: &Dirs, cpus: u32, facts: Arc<DaemonFacts>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(MapCollector {
        dirs: dirs.clone(),
        cpus,
        facts,
    }));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        log::error!("metrics: encoding: {e}");
    }
    out
}

/// The classic Prometheus text format (0.0.4) of OpenMetrics text, for scrapers and tools
/// that do not ask for OpenMetrics (promtool among them): counter families are named with
/// their `_total` suffix, `# EOF` goes, and empty label sets are written without braces.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(name) {
                    format!("{name}_total")
                } else {
                    name.to_string()
                };
                out.push_str(&format!("{kind}{name} {tail}\n"));
            }
            None => {
                out.push_str(&line.replacen("{} ", " ", 1));
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `GET /metrics` on `listen` from a background thread, for the daemon's lifetime.
pub fn serve(
    listen: SocketAddr,
    dirs: Dirs,
    cpus: u32,
    facts: Arc<DaemonFacts>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen)?;
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let respond = |request: &[u8]| respond(request, &dirs, cpus, &facts);
            if let Err(e) = crate::daemon::metrics_server::serve(listener, respond) {
                log::error!("metrics endpoint stopped: {e}");
            }
        })?;
    Ok(())
}

/// The response to one request (its request line and headers).
fn respond(request: &[u8], dirs: &Dirs, cpus: u32, facts: &Arc<DaemonFacts>) -> Vec<u8> {
    let request = String::from_utf8_lossy(request);
    let mut lines = request.lines();
    let first = lines.next().unwrap_or("");
    // Only Accept matters among the headers.
    let openmetrics = lines.any(|line| {
        let lower = line.to_ascii_lowercase();
        lower.starts_with("accept:") && lower.contains("application/openmetrics-text")
    });
    let mut parts = first.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body, ctype) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") if openmetrics => (
            "200 OK",
            render(dirs, cpus, facts.clone()),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        ("GET", "/metrics") => (
            "200 OK",
            to_prometheus_text(&render(dirs, cpus, facts.clone())),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        ("GET", _) => (
            "404 Not Found",
            "mailguard serves /metrics\n".to_string(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "GET only\n".to_string(),
            "text/plain",
        ),
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_with_total() {
        let om = "# HELP mailguard_packets packets by reason\n# TYPE mailguard_packets counter\n\
                  mailguard_packets_total{reason=\"non_ip\"} 3\n# HELP mailguard_monitor_mode 1 in monitor mode\n\
                  # TYPE mailguard_monitor_mode gauge\nmailguard_monitor_mode{} 0.0\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP mailguard_packets_total packets by reason\n# TYPE mailguard_packets_total counter\n\
             mailguard_packets_total{reason=\"non_ip\"} 3\n# HELP mailguard_monitor_mode 1 in monitor mode\n\
             # TYPE mailguard_monitor_mode gauge\nmailguard_monitor_mode 0.0\n"
        );
    }
}
