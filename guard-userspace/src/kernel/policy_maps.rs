//! The policy maps of a loaded or pinned program, and writing `Contents` into them: whole (a
//! first start) or as the difference from what they hold (`apply_over`), each trie updated
//! make-before-break.

use std::borrow::BorrowMut;

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use guard_common::{
    BlockEntry, BudgetSettings, ClassBudget, INDEX_LISTS, OpenSourceV4, OpenSourceV6, PortRule,
    Settings, V6_INDEX_ACTIVE_BITS, index_active_bit, maps as names, v6_list,
};

use crate::kernel::policy::{
    Contents, HostFacts, Prefixes, budget_settings, class_budgets, merged, settings,
};
use crate::{
    config::Config,
    config::lists::ListName,
    kernel::guard::GuardError,
    kernel::index_v4::{IndexMaps, V4Index},
    kernel::index_v6::V6IndexMaps,
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

pub(super) fn v4_bytes(k: OpenSourceV4) -> [u8; 7] {
    let mut b = [0; 7];
    b[0] = k.proto;
    b[1..3].copy_from_slice(&k.port);
    b[3..].copy_from_slice(&k.addr);
    b
}

pub(super) fn v6_bytes(k: OpenSourceV6) -> [u8; 19] {
    let mut b = [0; 19];
    b[0] = k.proto;
    b[1..3].copy_from_slice(&k.port);
    b[3..].copy_from_slice(&k.addr);
    b
}

pub(super) fn v4_key(b: &[u8; 7]) -> OpenSourceV4 {
    OpenSourceV4 {
        proto: b[0],
        port: [b[1], b[2]],
        addr: [b[3], b[4], b[5], b[6]],
    }
}

pub(super) fn v6_key(b: &[u8; 19]) -> OpenSourceV6 {
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
    let mono = super::monotonic_coarse_ns();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (mono, unix)
}

impl<T: BorrowMut<MapData>> PolicyMaps<T> {
    /// Writes `contents` (with the settings of `config`) over whatever the maps hold now, read
    /// back from them: what a start does, over freshly loaded maps or adopted ones, and what
    /// the fixtures and the bench do. (A running daemon knows what it wrote, and calls
    /// `apply_over` with that.)
    pub fn write(&mut self, contents: &Contents, config: &Config) -> Result<(), GuardError> {
        let current = self.read_contents()?;
        self.apply_over(&current, contents, config)
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
        let index = self.write_index(in_force.index, old, new) | v6_bits;
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
    /// too scattered for the index is left to its trie, with a warning. A list whose IPv4
    /// entries did not change keeps the generation in use (a new ban rewrites the block list's
    /// index only, not the other two).
    fn write_index(&mut self, in_force: u32, old: &Contents, new: &Contents) -> u32 {
        let mut kept = 0;
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
            let bits =
                index_active_bit(list.index()) | guard_common::index_generation_bit(list.index());
            let indexed = in_force & index_active_bit(list.index()) != 0;
            if indexed && old.list(list).v4 == new.list(list).v4 {
                kept |= in_force & bits;
                continue;
            }
            lists[list.index() as usize] = build(list);
        }
        self.index
            .write(in_force, &lists.each_ref().map(Option::as_ref))
            | kept
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
