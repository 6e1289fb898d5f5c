//! Turns a `Config` (and the lists' fetched entries) into the contents of the policy maps, and
//! writes them.

use std::{
    borrow::BorrowMut,
    collections::{BTreeMap, BTreeSet},
};

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use guard_common::{
    BUDGET_ACTIVE, BUDGET_REJECT, BlockEntry, BudgetSettings, ClassBudget, Gcra, INDEX_LISTS,
    MailClass, OPEN_SOURCE_PREFIX_BITS, OpenSourceV4, OpenSourceV6, PortRule,
    SETTING_BLOCK_V4_USED, SETTING_BLOCK_V6_USED, SETTING_ECHO_ALLOW, SETTING_MONITOR,
    SETTING_MX_ONLY, Settings, TRUSTED_V4_USED, TRUSTED_V6_USED, Transport, V6_INDEX_ACTIVE_BITS,
    index_active_bit, maps as names, port_rule_index, prefix_mask, source_buckets, v6_list,
};
use ipnet::IpNet;

use crate::{
    budgets::{Action, Budgets, ClassLimits},
    config::{Config, EchoPolicy},
    guard::GuardError,
    list_index::{IndexMaps, V4Index},
    list_index_v6::V6IndexMaps,
    lists::ListName,
};

/// The policy maps of a loaded or pinned program, and the facts of the host that go into them.
pub struct PolicyMaps<T> {
    pub settings: Array<T, Settings>,
    pub ports: Array<T, PortRule>,
    pub open_v4: LpmTrie<T, OpenSourceV4, u8>,
    pub open_v6: LpmTrie<T, OpenSourceV6, u8>,
    pub budgets: Array<T, ClassBudget>,
    pub budget_settings: Array<T, BudgetSettings>,
    pub trusted_v4: LpmTrie<T, [u8; 4], u8>,
    pub trusted_v6: LpmTrie<T, [u8; 16], u8>,
    pub mx_allow_v4: LpmTrie<T, [u8; 4], u8>,
    pub mx_allow_v6: LpmTrie<T, [u8; 16], u8>,
    pub block_v4: LpmTrie<T, [u8; 4], BlockEntry>,
    pub block_v6: LpmTrie<T, [u8; 16], BlockEntry>,
    /// The IPv4 list index, mapped writable.
    pub index: IndexMaps,
    /// The IPv6 list index.
    pub v6_index: V6IndexMaps<T>,
    pub host: HostFacts,
}

/// What the budget settings depend on besides the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// CPUs XDP runs on: the per-CPU global limits each get their share.
    pub cpus: u32,
    /// Cookie of the network namespace whose connections sock_ops counts (0: all).
    pub netns_cookie: u64,
}

/// The `ClassBudget` of a class's limits.
pub fn class_budget(limits: &ClassLimits) -> ClassBudget {
    if limits.is_unlimited() {
        return ClassBudget::default();
    }
    let mut flags = BUDGET_ACTIVE;
    if limits.action == Action::Reject {
        flags |= BUDGET_REJECT;
    }
    ClassBudget {
        rate: Gcra::new(limits.rate, limits.burst),
        max_connections: limits.max_connections,
        flags,
    }
}

/// Budgets by `MailClass` slot.
pub fn class_budgets(b: &Budgets) -> [(u32, ClassBudget); 3] {
    [
        (MailClass::Mx as u32, class_budget(&b.mx)),
        (MailClass::Submission as u32, class_budget(&b.submission)),
        (MailClass::Mailbox as u32, class_budget(&b.mailbox)),
    ]
}

/// The global budget settings; per-CPU limits get an equal share of the configured rate.
pub fn budget_settings(b: &Budgets, trusted: &AddrList, host: HostFacts) -> BudgetSettings {
    let cpus = host.cpus.max(1);
    let share = |rate: f64, burst: u32| Gcra::new(rate / cpus as f64, (burst / cpus).max(1));
    BudgetSettings {
        syn_ceiling: share(b.syn_ceiling, b.syn_ceiling_burst),
        reject_limit: share(b.reject_limit, (b.reject_limit.ceil() as u32).max(1)),
        netns_cookie: host.netns_cookie,
        mask_v4: prefix_mask::<4>(b.source_prefix_v4 as u32),
        mask_v6: prefix_mask::<16>(b.source_prefix_v6 as u32),
        flags: (if trusted.v4.is_empty() {
            0
        } else {
            TRUSTED_V4_USED
        }) | (if trusted.v6.is_empty() {
            0
        } else {
            TRUSTED_V6_USED
        }),
        source_buckets: source_buckets(b.tracked_sources),
        reserved: 0,
    }
}

/// Entries of an address trie: (prefix length, network address) -> a value (for the block
/// list: when the block ends, Unix seconds, 0 for never; 0 elsewhere).
pub type Prefixes<A> = BTreeMap<(u32, A), u64>;

/// An address list as the two tries hold it.
#[derive(Default, Debug, PartialEq, Eq, Clone)]
pub struct AddrList {
    pub v4: Prefixes<[u8; 4]>,
    pub v6: Prefixes<[u8; 16]>,
}

impl AddrList {
    pub fn insert(&mut self, net: &IpNet, value: u64) {
        match net {
            IpNet::V4(n) => {
                self.v4
                    .insert((n.prefix_len() as u32, n.network().octets()), value);
            }
            IpNet::V6(n) => {
                self.v6
                    .insert((n.prefix_len() as u32, n.network().octets()), value);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries the lists hold beyond the configuration's own CIDRs (fetched from files and SPF,
/// added at run time), with their block expiry (Unix seconds, 0 for never).
pub type Extra = BTreeMap<ListName, BTreeMap<IpNet, u64>>;

/// The `Settings` a configuration and the block list ask for.
pub fn settings(config: &Config, block: &AddrList, index: u32) -> Settings {
    let mut flags = 0;
    if config.monitor {
        flags |= SETTING_MONITOR;
    }
    if config.icmp_echo == EchoPolicy::Allow {
        flags |= SETTING_ECHO_ALLOW;
    }
    if config.mx_only {
        flags |= SETTING_MX_ONLY;
    }
    if !block.v4.is_empty() {
        flags |= SETTING_BLOCK_V4_USED;
    }
    if !block.v6.is_empty() {
        flags |= SETTING_BLOCK_V6_USED;
    }
    Settings {
        flags,
        index,
        reserved: [0; 2],
    }
}

/// Every non-closed port rule, by map index.
pub fn port_rules(config: &Config) -> BTreeMap<u32, PortRule> {
    let mut rules = BTreeMap::new();
    for &port in &config.mail_ports {
        rules.insert(
            port_rule_index(Transport::Tcp, port),
            PortRule::mail(MailClass::of_port(port)),
        );
    }
    for open in &config.open_ports {
        rules.insert(
            port_rule_index(open.protocol.transport(), open.port),
            PortRule::open(!open.from.is_empty()),
        );
    }
    rules
}

/// Entries of the open-source tries: (prefix length, key data).
#[derive(Default, Debug, PartialEq, Eq, Clone)]
pub struct OpenSources {
    pub v4: BTreeSet<(u32, [u8; 7])>,
    pub v6: BTreeSet<(u32, [u8; 19])>,
}

pub fn open_sources(config: &Config) -> OpenSources {
    let mut out = OpenSources::default();
    for open in &config.open_ports {
        let transport = open.protocol.transport();
        for net in &open.from {
            match net {
                IpNet::V4(n) => {
                    let k = OpenSourceV4::new(transport, open.port, n.network().octets());
                    out.v4
                        .insert((OPEN_SOURCE_PREFIX_BITS + n.prefix_len() as u32, v4_bytes(k)));
                }
                IpNet::V6(n) => {
                    let k = OpenSourceV6::new(transport, open.port, n.network().octets());
                    out.v6
                        .insert((OPEN_SOURCE_PREFIX_BITS + n.prefix_len() as u32, v6_bytes(k)));
                }
            }
        }
    }
    out
}

fn v4_bytes(k: OpenSourceV4) -> [u8; 7] {
    let mut b = [0; 7];
    b[0] = k.proto;
    b[1..3].copy_from_slice(&k.port);
    b[3..].copy_from_slice(&k.addr);
    b
}

fn v6_bytes(k: OpenSourceV6) -> [u8; 19] {
    let mut b = [0; 19];
    b[0] = k.proto;
    b[1..3].copy_from_slice(&k.port);
    b[3..].copy_from_slice(&k.addr);
    b
}

fn v4_key(b: &[u8; 7]) -> OpenSourceV4 {
    OpenSourceV4 {
        proto: b[0],
        port: [b[1], b[2]],
        addr: [b[3], b[4], b[5], b[6]],
    }
}

fn v6_key(b: &[u8; 19]) -> OpenSourceV6 {
    let mut addr = [0; 16];
    addr.copy_from_slice(&b[3..]);
    OpenSourceV6 {
        proto: b[0],
        port: [b[1], b[2]],
        addr,
    }
}

/// Which half of a trie update: additions (and changed values) go first, removals last, so
/// that an entry in both the old and the new version is never missing in between.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Add,
    Remove,
}

fn sync_trie<T, A, V>(
    trie: &mut LpmTrie<T, A, V>,
    name: &'static str,
    old: &Prefixes<A>,
    new: &Prefixes<A>,
    phase: Phase,
    value: impl Fn(u64) -> Option<V>,
) -> Result<(), GuardError>
where
    T: BorrowMut<MapData>,
    A: aya::Pod + Ord,
    V: aya::Pod,
{
    match phase {
        Phase::Add => {
            for (&(len, addr), &v) in new.iter().filter(|(k, v)| old.get(k) != Some(v)) {
                match value(v) {
                    Some(val) => trie
                        .insert(&Key::new(len, addr), val, 0)
                        .map_err(GuardError::map(name))?,
                    // An entry whose time is up: not added.
                    None => {
                        let _ = trie.remove(&Key::new(len, addr));
                    }
                }
            }
        }
        Phase::Remove => {
            for &(len, addr) in old.keys().filter(|k| !new.contains_key(k)) {
                trie.remove(&Key::new(len, addr))
                    .map_err(GuardError::map(name))?;
            }
        }
    }
    Ok(())
}

const NS: u64 = 1_000_000_000;

/// Now on the kernel's CLOCK_MONOTONIC_COARSE and on the wall clock, both in nanoseconds.
fn clocks() -> (u64, u64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    let mono = ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (mono, unix)
}

impl<T: BorrowMut<MapData>> PolicyMaps<T> {
    /// Writes `new` into freshly loaded (empty) maps, or over `old`: what they hold now.
    pub fn apply(&mut self, old: Option<&Config>, new: &Config) -> Result<(), GuardError> {
        let old = old
            .map(|c| Contents::of(c, &Extra::new()))
            .unwrap_or_default();
        self.apply_over(&old, &Contents::of(new, &Extra::new()), new)
    }

    /// Writes `new` (with the settings of `config`) into maps that hold `old`. Allowed and
    /// trusted sources are added before the rules that need them and removed after, and every
    /// trie gains its new entries before losing its old ones: no packet that both versions
    /// pass is dropped while this runs.
    ///
    /// When it fails half-way, the IPv6 lists go back to their tries: the tries are what the
    /// next update reads back, and the IPv6 index, which follows them, is rebuilt from them
    /// when that update indexes the lists again.
    pub fn apply_over(
        &mut self,
        old: &Contents,
        new: &Contents,
        config: &Config,
    ) -> Result<(), GuardError> {
        let result = self.try_apply_over(old, new, config);
        if result.is_err()
            && let Ok(mut s) = self.settings.get(&0, 0)
        {
            s.index &= !V6_INDEX_ACTIVE_BITS;
            let _ = self.settings.set(0, s, 0);
        }
        result
    }

    fn try_apply_over(
        &mut self,
        old: &Contents,
        new: &Contents,
        config: &Config,
    ) -> Result<(), GuardError> {
        // Before anything is written: a list its maps cannot hold beside the version in force.
        for list in ListName::ALL {
            let l = new.list(list);
            for (family, entries) in [("IPv4", l.v4.len()), ("IPv6", l.v6.len())] {
                if entries > guard_common::LIST_MAX_ENTRIES as usize {
                    return Err(GuardError::ListTooLarge {
                        list: list.name(),
                        family,
                        entries,
                        max: guard_common::LIST_MAX_ENTRIES as usize,
                    });
                }
            }
        }
        let (mono, unix) = clocks();
        let in_force = self
            .settings
            .get(&0, 0)
            .map_err(GuardError::map(names::SETTINGS))?;
        self.sync_lists(old, new, Phase::Add, unix, mono)?;
        // The IPv6 indexes gain the new prefixes with the tries, and their length tables for
        // the new versions go into the generations not in use.
        let mut v6_bits = 0;
        for list in ListName::ALL {
            v6_bits |= self.v6_index.prepare(
                list.index(),
                list.name(),
                in_force.index,
                &old.list(list).v6,
                &new.list(list).v6,
            );
        }
        let old_sources = &old.open_sources;
        let new_sources = &new.open_sources;
        for (len, data) in new_sources.v4.difference(&old_sources.v4) {
            self.open_v4
                .insert(&Key::new(*len, v4_key(data)), 1, 0)
                .map_err(GuardError::map(names::OPEN_SOURCES_V4))?;
        }
        for (len, data) in new_sources.v6.difference(&old_sources.v6) {
            self.open_v6
                .insert(&Key::new(*len, v6_key(data)), 1, 0)
                .map_err(GuardError::map(names::OPEN_SOURCES_V6))?;
        }
        for (index, rule) in &new.port_rules {
            if old.port_rules.get(index) != Some(rule) {
                self.ports
                    .set(*index, rule, 0)
                    .map_err(GuardError::map(names::PORT_RULES))?;
            }
        }
        for index in old
            .port_rules
            .keys()
            .filter(|i| !new.port_rules.contains_key(i))
        {
            self.ports
                .set(*index, PortRule::CLOSED, 0)
                .map_err(GuardError::map(names::PORT_RULES))?;
        }
        for (len, data) in old_sources.v4.difference(&new_sources.v4) {
            self.open_v4
                .remove(&Key::new(*len, v4_key(data)))
                .map_err(GuardError::map(names::OPEN_SOURCES_V4))?;
        }
        for (len, data) in old_sources.v6.difference(&new_sources.v6) {
            self.open_v6
                .remove(&Key::new(*len, v6_key(data)))
                .map_err(GuardError::map(names::OPEN_SOURCES_V6))?;
        }
        self.budget_settings
            .set(
                0,
                budget_settings(&config.budgets, &new.trusted, self.host),
                0,
            )
            .map_err(GuardError::map(names::BUDGET_SETTINGS))?;
        for (slot, budget) in class_budgets(&config.budgets) {
            self.budgets
                .set(slot, budget, 0)
                .map_err(GuardError::map(names::BUDGETS))?;
        }
        // The new versions of the IPv4 indexes go into the generations not in use; the settings
        // switch to them (and to the IPv6 length tables), and say which lists have entries,
        // while both versions' entries are in the tries and the IPv6 index.
        let index = self.write_index(in_force.index, new) | v6_bits;
        self.settings
            .set(
                0,
                settings(config, &merged(&old.block, &new.block), index),
                0,
            )
            .map_err(GuardError::map(names::SETTINGS))?;
        self.sync_lists(old, new, Phase::Remove, unix, mono)?;
        for list in ListName::ALL {
            let bit = index_active_bit(v6_list(list.index()));
            self.v6_index.retire(
                list.index(),
                in_force.index & bit != 0,
                index & bit != 0,
                &old.list(list).v6,
                &new.list(list).v6,
            );
        }
        self.settings
            .set(0, settings(config, &new.block, index), 0)
            .map_err(GuardError::map(names::SETTINGS))?;
        Ok(())
    }

    /// Writes the IPv4 index of every list into the generation not in use (`in_force`:
    /// `Settings::index` now) and returns the `Settings::index` that switches to them. A list
    /// too scattered for the index is left to its trie, with a warning.
    fn write_index(&mut self, in_force: u32, new: &Contents) -> u32 {
        let build = |list: ListName| match V4Index::build(new.list(list).v4.keys()) {
            Ok(ix) => Some(ix),
            Err(e) => {
                log::warn!(
                    "list {}: IPv4 lookups use the trie, not the index: {e}",
                    list.name()
                );
                None
            }
        };
        let mut lists: [Option<V4Index>; INDEX_LISTS as usize] = Default::default();
        for list in ListName::ALL {
            lists[list.index() as usize] = build(list);
        }
        self.index
            .write(in_force, &lists.each_ref().map(Option::as_ref))
    }
}

impl<T: BorrowMut<MapData>> PolicyMaps<T> {
    /// One phase of the three lists' update. Block expiries go from Unix seconds to the
    /// kernel's monotonic clock (`mono` and `unix`: the same instant on both clocks, in ns).
    fn sync_lists(
        &mut self,
        old: &Contents,
        new: &Contents,
        phase: Phase,
        unix: u64,
        mono: u64,
    ) -> Result<(), GuardError> {
        let permanent = |_: u64| Some(1u8);
        let block = |expires: u64| match expires {
            0 => Some(BlockEntry { expires_ns: 0 }),
            e if e * NS <= unix => None,
            e => Some(BlockEntry {
                expires_ns: mono + (e * NS - unix),
            }),
        };
        sync_trie(
            &mut self.trusted_v4,
            names::TRUSTED_V4,
            &old.trusted.v4,
            &new.trusted.v4,
            phase,
            permanent,
        )?;
        sync_trie(
            &mut self.trusted_v6,
            names::TRUSTED_V6,
            &old.trusted.v6,
            &new.trusted.v6,
            phase,
            permanent,
        )?;
        sync_trie(
            &mut self.mx_allow_v4,
            names::MX_ALLOW_V4,
            &old.mx_allow.v4,
            &new.mx_allow.v4,
            phase,
            permanent,
        )?;
        sync_trie(
            &mut self.mx_allow_v6,
            names::MX_ALLOW_V6,
            &old.mx_allow.v6,
            &new.mx_allow.v6,
            phase,
            permanent,
        )?;
        sync_trie(
            &mut self.block_v4,
            names::BLOCK_V4,
            &old.block.v4,
            &new.block.v4,
            phase,
            block,
        )?;
        sync_trie(
            &mut self.block_v6,
            names::BLOCK_V6,
            &old.block.v6,
            &new.block.v6,
            phase,
            block,
        )
    }
}

/// Both versions of a list (for the "has entries" flags while a swap runs).
fn merged(a: &AddrList, b: &AddrList) -> AddrList {
    let mut m = a.clone();
    m.v4.extend(b.v4.iter().map(|(k, v)| (*k, *v)));
    m.v6.extend(b.v6.iter().map(|(k, v)| (*k, *v)));
    m
}

/// What the policy maps hold: port rules, open-port sources and the three lists. Settings and
/// budgets are single slots, overwritten whole.
#[derive(Default, Debug, PartialEq, Eq, Clone)]
pub struct Contents {
    pub port_rules: BTreeMap<u32, PortRule>,
    pub open_sources: OpenSources,
    pub trusted: AddrList,
    pub mx_allow: AddrList,
    pub block: AddrList,
}

impl Contents {
    /// The contents a configuration puts in the maps, with the lists' `extra` entries.
    pub fn of(config: &Config, extra: &Extra) -> Contents {
        let mut c = Contents {
            port_rules: port_rules(config),
            open_sources: open_sources(config),
            ..Contents::default()
        };
        for list in ListName::ALL {
            let target = c.list_mut(list);
            for net in &config.lists.sources(list).cidrs {
                target.insert(net, 0);
            }
            for (net, expires) in extra.get(&list).into_iter().flatten() {
                target.insert(net, *expires);
            }
        }
        c
    }

    pub fn list(&self, list: ListName) -> &AddrList {
        match list {
            ListName::MxAllow => &self.mx_allow,
            ListName::Trusted => &self.trusted,
            ListName::Block => &self.block,
        }
    }

    fn list_mut(&mut self, list: ListName) -> &mut AddrList {
        match list {
            ListName::MxAllow => &mut self.mx_allow,
            ListName::Trusted => &mut self.trusted,
            ListName::Block => &mut self.block,
        }
    }
}

impl<T: std::borrow::Borrow<MapData>> PolicyMaps<T> {
    /// Reads what the maps hold (every port rule slot, every trie key).
    pub fn read_contents(&self) -> Result<Contents, GuardError> {
        let mut c = Contents::default();
        for index in 0..guard_common::PORT_RULE_ENTRIES {
            let rule = self
                .ports
                .get(&index, 0)
                .map_err(GuardError::map(names::PORT_RULES))?;
            if rule != PortRule::CLOSED {
                c.port_rules.insert(index, rule);
            }
        }
        for key in self.open_v4.keys() {
            let key = key.map_err(GuardError::map(names::OPEN_SOURCES_V4))?;
            c.open_sources
                .v4
                .insert((key.prefix_len(), v4_bytes(key.data())));
        }
        for key in self.open_v6.keys() {
            let key = key.map_err(GuardError::map(names::OPEN_SOURCES_V6))?;
            c.open_sources
                .v6
                .insert((key.prefix_len(), v6_bytes(key.data())));
        }
        for key in self.trusted_v4.keys() {
            let key = key.map_err(GuardError::map(names::TRUSTED_V4))?;
            c.trusted.v4.insert((key.prefix_len(), key.data()), 0);
        }
        for key in self.trusted_v6.keys() {
            let key = key.map_err(GuardError::map(names::TRUSTED_V6))?;
            c.trusted.v6.insert((key.prefix_len(), key.data()), 0);
        }
        for key in self.mx_allow_v4.keys() {
            let key = key.map_err(GuardError::map(names::MX_ALLOW_V4))?;
            c.mx_allow.v4.insert((key.prefix_len(), key.data()), 0);
        }
        for key in self.mx_allow_v6.keys() {
            let key = key.map_err(GuardError::map(names::MX_ALLOW_V6))?;
            c.mx_allow.v6.insert((key.prefix_len(), key.data()), 0);
        }
        // Block expiries back to Unix seconds (rounded up).
        let (mono, unix) = clocks();
        let unix_of = |e: BlockEntry| {
            if e.expires_ns == 0 {
                0
            } else {
                (unix + e.expires_ns.saturating_sub(mono)).div_ceil(NS)
            }
        };
        for entry in self.block_v4.iter() {
            let (key, e) = entry.map_err(GuardError::map(names::BLOCK_V4))?;
            c.block
                .v4
                .insert((key.prefix_len(), key.data()), unix_of(e));
        }
        for entry in self.block_v6.iter() {
            let (key, e) = entry.map_err(GuardError::map(names::BLOCK_V6))?;
            c.block
                .v6
                .insert((key.prefix_len(), key.data()), unix_of(e));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn lists_combine_config_and_extra_entries() {
        let (c, _) = Config::parse(
            "mx_only = true\n[lists.mx_allow]\ncidrs = [\"198.18.10.0/24\"]\n[lists.block]\ncidrs = [\"2001:db8:bad::/48\"]\n",
            "t",
        )
        .unwrap();
        let mut extra = Extra::new();
        extra
            .entry(ListName::MxAllow)
            .or_default()
            .insert("198.18.11.0/24".parse().unwrap(), 0);
        extra
            .entry(ListName::Block)
            .or_default()
            .insert("198.19.0.7/32".parse().unwrap(), 1_900_000_000);
        let contents = Contents::of(&c, &extra);
        assert_eq!(contents.mx_allow.len(), 2);
        assert_eq!(contents.block.v6.len(), 1);
        assert_eq!(contents.block.v4[&(32, [198, 19, 0, 7])], 1_900_000_000);
        let s = settings(&c, &contents.block, 0);
        assert_eq!(
            s.flags,
            SETTING_ECHO_ALLOW | SETTING_MX_ONLY | SETTING_BLOCK_V4_USED | SETTING_BLOCK_V6_USED
        );
    }

    #[test]
    fn budgets_become_map_values() {
        let (c, _) = Config::parse(
            "[budgets]\nsyn_ceiling = 1000\nsyn_ceiling_burst = 100\nsource_prefix_v6 = 56\n[budgets.mx]\nrate = 4\nburst = 8\nmax_connections = 3\naction = \"reject\"\n[lists.trusted]\ncidrs = [\"198.18.9.0/24\"]\n",
            "t",
        )
        .unwrap();
        let host = HostFacts {
            cpus: 2,
            netns_cookie: 4096,
        };
        let [(mx_slot, mx), (_, sub), (_, mbox)] = class_budgets(&c.budgets);
        assert_eq!(mx_slot, 1);
        assert_eq!(
            mx.rate,
            Gcra {
                interval_ns: 250_000_000,
                tolerance_ns: 7 * 250_000_000
            }
        );
        assert_eq!(
            (mx.max_connections, mx.flags),
            (3, BUDGET_ACTIVE | BUDGET_REJECT)
        );
        assert_eq!(
            sub.flags, BUDGET_ACTIVE,
            "default submission budget, action drop"
        );
        assert_eq!(mbox, ClassBudget::default(), "mailbox unlimited: inactive");
        let contents = Contents::of(&c, &Extra::new());
        let s = budget_settings(&c.budgets, &contents.trusted, host);
        // 1000/s over 2 CPUs: one every 2 ms per CPU, bursts of 50 each.
        assert_eq!(
            s.syn_ceiling,
            Gcra {
                interval_ns: 2_000_000,
                tolerance_ns: 49 * 2_000_000
            }
        );
        assert_eq!(s.netns_cookie, 4096);
        assert_eq!(s.mask_v4, [255; 4]);
        assert_eq!(&s.mask_v6[..8], &[255, 255, 255, 255, 255, 255, 255, 0]);
        assert_eq!(
            contents.trusted.v4.keys().collect::<Vec<_>>(),
            [&(24, [198, 18, 9, 0])]
        );
        assert_eq!(s.flags, TRUSTED_V4_USED);
    }

    #[test]
    fn default_config_rules() {
        let c = Config::default();
        let rules = port_rules(&c);
        assert_eq!(rules.len(), 8);
        assert_eq!(rules[&25], PortRule::mail(MailClass::Mx));
        assert_eq!(rules[&587], PortRule::mail(MailClass::Submission));
        assert_eq!(rules[&993], PortRule::mail(MailClass::Mailbox));
        assert_eq!(rules[&22], PortRule::open(false));
        assert!(
            !rules.contains_key(&6400),
            "port 25 must not be stored byte-swapped"
        );
        let s = settings(&c, &AddrList::default(), 0);
        assert_eq!(s.flags, SETTING_ECHO_ALLOW);
    }

    #[test]
    fn restricted_open_ports_become_trie_entries() {
        let (c, _) = Config::parse(
            "monitor = true\nicmp_echo = \"drop\"\n[[open_ports]]\nport = 22\nfrom = [\"198.18.0.0/15\", \"2001:db8::/32\"]\n[[open_ports]]\nport = 53\nprotocol = \"udp\"\n",
            "t",
        )
        .unwrap();
        let rules = port_rules(&c);
        assert_eq!(rules[&22], PortRule::open(true));
        assert_eq!(rules[&(65536 + 53)], PortRule::open(false));
        let s = open_sources(&c);
        assert_eq!(
            s.v4.iter().collect::<Vec<_>>(),
            [&(24 + 15, [6, 0, 22, 198, 18, 0, 0])]
        );
        let (len, bytes) = s.v6.iter().next().unwrap();
        assert_eq!(*len, 24 + 32);
        assert_eq!(&bytes[..7], &[6, 0, 22, 0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(settings(&c, &AddrList::default(), 0).flags, SETTING_MONITOR);
    }
}
