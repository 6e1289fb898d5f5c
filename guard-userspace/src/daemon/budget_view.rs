//! The budgets as the running mailguard holds them, read from its pinned maps: what `status`
//! shows about budgets, and the rows of `mailguard top`.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use guard_common::{
    ACCOUNTING_SLOTS, AccountingEvent, BUDGET_ACTIVE, BUDGET_REJECT, BudgetOutcome, BudgetSettings,
    CLASS_OUTCOMES, ClassBudget, FAMILY_V6, Gcra, MailClass, SourceKey, SourceState,
    effective_count, maps as names,
};
use serde::Serialize;

use crate::{
    daemon::state::{Dirs, StateError, pinned},
    kernel::guard::GuardError,
    kernel::source_table::SourceTable,
};

const CLASSES: [(MailClass, &str); 3] = [
    (MailClass::Mx, "mx"),
    (MailClass::Submission, "submission"),
    (MailClass::Mailbox, "mailbox"),
];

#[derive(Serialize, Debug)]
pub struct ClassView {
    pub class: &'static str,
    /// New connections per second per source; `None` when unlimited.
    pub rate: Option<f64>,
    pub burst: Option<u64>,
    /// Concurrent connections per source; `None` when unlimited.
    pub max_connections: Option<u32>,
    pub action: &'static str,
    /// Budget decisions so far, by outcome (`within`, `trusted`, `ceiling`, `rate`, `cap`, ...).
    pub outcomes: BTreeMap<&'static str, u64>,
}

#[derive(Serialize, Debug)]
pub struct BudgetView {
    pub classes: Vec<ClassView>,
    pub source_prefix_v4: u32,
    pub source_prefix_v6: u32,
    /// SYNs per second (all CPUs together) from unverified sources; `None` when off.
    pub syn_ceiling: Option<f64>,
    /// RSTs per second (all CPUs together); `None` when unlimited.
    pub reject_limit: Option<f64>,
    pub sources_tracked: u64,
    pub sources_capacity: u32,
    pub sources_with_connections: u64,
    pub connections_counted: u64,
    /// Connections counted, by class (`mx`, `submission`, `mailbox`).
    pub connections_by_class: BTreeMap<&'static str, u64>,
    pub connections_capacity: u32,
    /// Tracking events (`counted`, `uncounted`, `socket_table_full`, ...).
    pub events: BTreeMap<&'static str, u64>,
}

fn rate_of(g: &Gcra, cpus: u32) -> Option<(f64, u64)> {
    if g.is_unlimited() {
        return None;
    }
    let per_cpu = 1e9 / g.interval_ns as f64;
    Some((
        per_cpu * cpus as f64,
        (g.tolerance_ns / g.interval_ns + 1) * cpus as u64,
    ))
}

fn per_cpu_sum(map: &Map, name: &'static str, slots: u32) -> Result<Vec<u64>, StateError> {
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map).map_err(GuardError::map(name))?;
    (0..slots)
        .map(|i| {
            Ok(array
                .get(&i, 0)
                .map_err(GuardError::map(name))?
                .iter()
                .sum())
        })
        .collect()
}

fn capacity(map: &Map, name: &'static str) -> Result<u32, StateError> {
    let data: &MapData = match map {
        Map::HashMap(m) | Map::LruHashMap(m) => m,
        _ => return Ok(0),
    };
    Ok(data.info().map_err(GuardError::map(name))?.max_entries())
}

fn prefix_bits(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

impl BudgetView {
    pub fn read(dirs: &Dirs, cpus: u32) -> Result<BudgetView, StateError> {
        let budgets_map = pinned(dirs, names::BUDGETS)?;
        let budgets: Array<_, ClassBudget> =
            Array::try_from(&budgets_map).map_err(GuardError::map(names::BUDGETS))?;
        let settings_map = pinned(dirs, names::BUDGET_SETTINGS)?;
        let settings: Array<_, BudgetSettings> =
            Array::try_from(&settings_map).map_err(GuardError::map(names::BUDGET_SETTINGS))?;
        let settings = settings
            .get(&0, 0)
            .map_err(GuardError::map(names::BUDGET_SETTINGS))?;
        let outcomes = per_cpu_sum(
            &pinned(dirs, names::CLASS_COUNTERS)?,
            names::CLASS_COUNTERS,
            guard_common::CLASS_COUNTER_SLOTS,
        )?;
        let events = per_cpu_sum(
            &pinned(dirs, names::ACCOUNTING)?,
            names::ACCOUNTING,
            ACCOUNTING_SLOTS,
        )?;

        let mut classes = Vec::new();
        for (class, name) in CLASSES {
            let b = budgets
                .get(&(class as u32), 0)
                .map_err(GuardError::map(names::BUDGETS))?;
            let active = b.flags & BUDGET_ACTIVE != 0;
            let rate = if active { rate_of(&b.rate, 1) } else { None };
            classes.push(ClassView {
                class: name,
                rate: rate.map(|r| r.0),
                burst: rate.map(|r| r.1),
                max_connections: (active && b.max_connections != 0).then_some(b.max_connections),
                action: if b.flags & BUDGET_REJECT != 0 {
                    "reject"
                } else {
                    "drop"
                },
                outcomes: BudgetOutcome::ALL
                    .iter()
                    .map(|o| {
                        (
                            o.name(),
                            outcomes[(class as u32 * CLASS_OUTCOMES + *o as u32) as usize],
                        )
                    })
                    .collect(),
            });
        }

        let sources = SourceTable::open(&pinned(dirs, names::SOURCES)?)?;
        let sources_tracked = sources.in_use().count() as u64;
        let conns_map = pinned(dirs, names::CONNECTIONS)?;
        let conns: HashMap<_, SourceKey, u32> =
            HashMap::try_from(&conns_map).map_err(GuardError::map(names::CONNECTIONS))?;
        let (mut with, mut counted) = (0, 0);
        let mut by_class: BTreeMap<&'static str, u64> =
            CLASSES.iter().map(|(_, name)| (*name, 0)).collect();
        for (k, n) in conns.iter().filter_map(Result::ok) {
            with += 1;
            counted += effective_count(n) as u64;
            *by_class.entry(class_name(k.class)).or_default() += effective_count(n) as u64;
        }
        Ok(BudgetView {
            classes,
            source_prefix_v4: prefix_bits(&settings.mask_v4),
            source_prefix_v6: prefix_bits(&settings.mask_v6),
            syn_ceiling: rate_of(&settings.syn_ceiling, cpus).map(|r| r.0),
            reject_limit: rate_of(&settings.reject_limit, cpus).map(|r| r.0),
            sources_tracked,
            sources_capacity: sources.capacity() as u32,
            sources_with_connections: with,
            connections_counted: counted,
            connections_by_class: by_class,
            connections_capacity: capacity(&conns_map, names::CONNECTIONS)?,
            events: AccountingEvent::ALL
                .iter()
                .map(|e| (e.name(), events[*e as usize]))
                .collect(),
        })
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nbudgets per source (IPv4 /{}, IPv6 /{}), for new connections to mail ports:",
            self.source_prefix_v4, self.source_prefix_v6
        );
        let _ = writeln!(
            out,
            "{:<11} {:>8} {:>6} {:>9} {:<7}  {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
            "CLASS",
            "RATE/S",
            "BURST",
            "MAX CONN",
            "ACTION",
            "WITHIN",
            "TRUSTED",
            "CEILING",
            "RATE",
            "CAP",
            "RST SENT"
        );
        for c in &self.classes {
            let rate = c.rate.map_or("-".to_string(), |r| format!("{r:.1}"));
            let burst = c.burst.map_or("-".to_string(), |b| b.to_string());
            let max = c.max_connections.map_or("-".to_string(), |m| m.to_string());
            let unlimited = c.rate.is_none() && c.max_connections.is_none();
            let _ = writeln!(
                out,
                "{:<11} {:>8} {:>6} {:>9} {:<7}  {:>9} {:>8} {:>8} {:>8} {:>8} {:>9}",
                c.class,
                rate,
                burst,
                max,
                if unlimited { "-" } else { c.action },
                c.outcomes["within"],
                c.outcomes["trusted"],
                c.outcomes["ceiling"],
                c.outcomes["rate"],
                c.outcomes["cap"],
                c.outcomes["rst_sent"],
            );
        }
        let _ = writeln!(
            out,
            "SYN ceiling for sources never seen completing a connection: {}; RST limit: {}",
            self.syn_ceiling
                .map_or("off".to_string(), |r| format!("{r:.0}/s")),
            self.reject_limit
                .map_or("unlimited".to_string(), |r| format!("{r:.0}/s")),
        );
        let _ = writeln!(
            out,
            "tracking: {} of {} sources; {} connections counted for {} sources (room for {})",
            self.sources_tracked,
            self.sources_capacity,
            self.connections_counted,
            self.sources_with_connections,
            self.connections_capacity,
        );
        let full = self.events["socket_table_full"]
            + self.events["count_table_full"]
            + self.events["no_close_callback"];
        if full > 0 {
            let _ = writeln!(
                out,
                "warning: {full} connections were not counted (tables full, or no close callback): see budgets.tracked_connections"
            );
        }
        let evicted = self.events["source_evicted"];
        if evicted > 0 {
            let _ = writeln!(
                out,
                "note: {evicted} sources were forgotten to make room for new ones (they start again with a full bucket): see budgets.tracked_sources"
            );
        }
        out
    }
}

/// One source in `mailguard top`.
#[derive(Serialize, Debug)]
pub struct TopRow {
    /// Source prefix, e.g. `198.18.0.2/32` or `2001:db8::/64`.
    pub source: String,
    pub class: &'static str,
    pub connections: u32,
    pub syns: u64,
    pub refused: u64,
    /// Seconds since its first new connection while tracked, when its rate is tracked.
    pub first_syn_seconds_ago: Option<f64>,
    /// Seconds since its last new connection, when its rate is tracked.
    pub last_syn_seconds_ago: Option<f64>,
}

fn class_name(c: u8) -> &'static str {
    match c {
        1 => "mx",
        2 => "submission",
        3 => "mailbox",
        _ => "?",
    }
}

fn source_name(k: &SourceKey, prefix_v4: u32, prefix_v6: u32) -> String {
    if k.family == FAMILY_V6 {
        format!("{}/{prefix_v6}", IpAddr::from(k.addr))
    } else {
        format!(
            "{}/{prefix_v4}",
            IpAddr::from([k.addr[0], k.addr[1], k.addr[2], k.addr[3]])
        )
    }
}

/// The sources with the most concurrent connections, then refusals, then SYNs.
pub fn top(dirs: &Dirs, limit: usize) -> Result<Vec<TopRow>, StateError> {
    let settings_map = pinned(dirs, names::BUDGET_SETTINGS)?;
    let settings: Array<_, BudgetSettings> =
        Array::try_from(&settings_map).map_err(GuardError::map(names::BUDGET_SETTINGS))?;
    let settings = settings
        .get(&0, 0)
        .map_err(GuardError::map(names::BUDGET_SETTINGS))?;
    let (p4, p6) = (
        prefix_bits(&settings.mask_v4),
        prefix_bits(&settings.mask_v6),
    );
    let mut rows: BTreeMap<SourceKey, (u32, Option<SourceState>)> = BTreeMap::new();
    let conns_map = pinned(dirs, names::CONNECTIONS)?;
    let conns: HashMap<_, SourceKey, u32> =
        HashMap::try_from(&conns_map).map_err(GuardError::map(names::CONNECTIONS))?;
    for (k, n) in conns.iter().filter_map(Result::ok) {
        rows.entry(k).or_default().0 = effective_count(n);
    }
    for slot in SourceTable::open(&pinned(dirs, names::SOURCES)?)?.in_use() {
        rows.entry(slot.key).or_default().1 = Some(slot.state);
    }
    let now = crate::kernel::monotonic_coarse_ns();
    let mut out: Vec<TopRow> = rows
        .into_iter()
        .map(|(k, (connections, state))| TopRow {
            source: source_name(&k, p4, p6),
            class: class_name(k.class),
            connections,
            syns: state.map_or(0, |s| s.syns.into()),
            refused: state.map_or(0, |s| s.refused.into()),
            first_syn_seconds_ago: state.map(|s| now.saturating_sub(s.first_ns) as f64 / 1e9),
            last_syn_seconds_ago: state.map(|s| now.saturating_sub(s.last_ns) as f64 / 1e9),
        })
        .collect();
    out.sort_by(|a, b| {
        (b.connections, b.refused, b.syns)
            .cmp(&(a.connections, a.refused, a.syns))
            .then(a.source.cmp(&b.source))
    });
    out.truncate(limit);
    Ok(out)
}

pub fn render_top(rows: &[TopRow]) -> String {
    let mut out = format!(
        "{:<28} {:<11} {:>11} {:>9} {:>9} {:>10}\n",
        "SOURCE", "CLASS", "CONNECTIONS", "SYNS", "REFUSED", "LAST SYN"
    );
    for r in rows {
        let last = r
            .last_syn_seconds_ago
            .map_or("-".to_string(), |s| format!("{s:.0}s ago"));
        let _ = writeln!(
            out,
            "{:<28} {:<11} {:>11} {:>9} {:>9} {:>10}",
            r.source, r.class, r.connections, r.syns, r.refused, last
        );
    }
    if rows.is_empty() {
        out.push_str("(no source tracked yet)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rates() {
        let k = SourceKey::v6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0],
            [255; 16],
            1,
        );
        assert_eq!(source_name(&k, 32, 64), "2001:db8:0:1::/64");
        let k4 = SourceKey::v4([198, 18, 0, 2], [255; 4], 2);
        assert_eq!(source_name(&k4, 32, 64), "198.18.0.2/32");
        assert_eq!(class_name(k4.class), "submission");
        // 5000/s per CPU with bursts of 10 000 per CPU, on 2 CPUs.
        let g = Gcra::new(5000.0, 10_000);
        assert_eq!(rate_of(&g, 2), Some((10_000.0, 20_000)));
        assert_eq!(rate_of(&Gcra::UNLIMITED, 2), None);
        assert_eq!(prefix_bits(&guard_common::prefix_mask::<16>(56)), 56);
    }
}
