//! Turns a `Config` into the contents of the policy maps, and writes them.

use std::{
    borrow::BorrowMut,
    collections::{BTreeMap, BTreeSet},
};

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use guard_common::{
    BUDGET_ACTIVE, BUDGET_REJECT, BudgetSettings, ClassBudget, Gcra, MailClass,
    OPEN_SOURCE_PREFIX_BITS, OpenSourceV4, OpenSourceV6, PortRule, SETTING_ECHO_ALLOW,
    SETTING_MONITOR, Settings, TRUSTED_V4_USED, TRUSTED_V6_USED, Transport, maps as names,
    port_rule_index, prefix_mask,
};
use ipnet::IpNet;

use crate::{
    budgets::{Action, Budgets, ClassLimits},
    config::{Config, EchoPolicy},
    guard::GuardError,
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
pub fn budget_settings(b: &Budgets, host: HostFacts) -> BudgetSettings {
    let cpus = host.cpus.max(1);
    let share = |rate: f64, burst: u32| Gcra::new(rate / cpus as f64, (burst / cpus).max(1));
    BudgetSettings {
        syn_ceiling: share(b.syn_ceiling, b.syn_ceiling_burst),
        reject_limit: share(b.reject_limit, (b.reject_limit.ceil() as u32).max(1)),
        netns_cookie: host.netns_cookie,
        mask_v4: prefix_mask::<4>(b.source_prefix_v4 as u32),
        mask_v6: prefix_mask::<16>(b.source_prefix_v6 as u32),
        flags: {
            let t = trusted(b);
            (if t.v4.is_empty() { 0 } else { TRUSTED_V4_USED })
                | (if t.v6.is_empty() { 0 } else { TRUSTED_V6_USED })
        },
    }
}

/// Entries of the trusted tries: (prefix length, address).
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Trusted {
    pub v4: BTreeSet<(u32, [u8; 4])>,
    pub v6: BTreeSet<(u32, [u8; 16])>,
}

pub fn trusted(b: &Budgets) -> Trusted {
    let mut t = Trusted::default();
    for net in &b.trusted {
        match net {
            IpNet::V4(n) => {
                t.v4.insert((n.prefix_len() as u32, n.network().octets()));
            }
            IpNet::V6(n) => {
                t.v6.insert((n.prefix_len() as u32, n.network().octets()));
            }
        }
    }
    t
}

/// The `Settings` a configuration asks for.
pub fn settings(config: &Config) -> Settings {
    let mut flags = 0;
    if config.monitor {
        flags |= SETTING_MONITOR;
    }
    if config.icmp_echo == EchoPolicy::Allow {
        flags |= SETTING_ECHO_ALLOW;
    }
    Settings {
        flags,
        reserved: [0; 3],
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
#[derive(Default, Debug, PartialEq, Eq)]
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

impl<T: BorrowMut<MapData>> PolicyMaps<T> {
    /// Writes `new` into the maps. `old` is what the maps hold now (`None`: freshly loaded,
    /// all empty). Allowed sources are added before the rules that need them and removed
    /// after the rules that used them, so no allowed packet is dropped while this runs.
    pub fn apply(&mut self, old: Option<&Config>, new: &Config) -> Result<(), GuardError> {
        let old = old.map(Contents::of).unwrap_or_default();
        self.apply_over(&old, new)
    }

    /// Writes `new` into maps that hold `old` (for maps reused from an earlier run: read with
    /// `read_contents`).
    pub fn apply_over(&mut self, old: &Contents, new: &Config) -> Result<(), GuardError> {
        let old_sources = &old.open_sources;
        let new_sources = open_sources(new);
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

        let old_rules = &old.port_rules;
        let new_rules = port_rules(new);
        for (index, rule) in &new_rules {
            if old_rules.get(index) != Some(rule) {
                self.ports
                    .set(*index, rule, 0)
                    .map_err(GuardError::map(names::PORT_RULES))?;
            }
        }
        for index in old_rules.keys().filter(|i| !new_rules.contains_key(i)) {
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

        self.apply_budgets(&old.trusted, &new.budgets)?;
        self.settings
            .set(0, settings(new), 0)
            .map_err(GuardError::map(names::SETTINGS))?;
        Ok(())
    }

    /// Writes the budgets: trusted sources added first and removed last, so that a source
    /// trusted before and after is never charged in between.
    fn apply_budgets(&mut self, old_trusted: &Trusted, new: &Budgets) -> Result<(), GuardError> {
        let new_trusted = trusted(new);
        for (len, addr) in new_trusted.v4.difference(&old_trusted.v4) {
            self.trusted_v4
                .insert(&Key::new(*len, *addr), 1, 0)
                .map_err(GuardError::map(names::TRUSTED_V4))?;
        }
        for (len, addr) in new_trusted.v6.difference(&old_trusted.v6) {
            self.trusted_v6
                .insert(&Key::new(*len, *addr), 1, 0)
                .map_err(GuardError::map(names::TRUSTED_V6))?;
        }
        self.budget_settings
            .set(0, budget_settings(new, self.host), 0)
            .map_err(GuardError::map(names::BUDGET_SETTINGS))?;
        for (slot, budget) in class_budgets(new) {
            self.budgets
                .set(slot, budget, 0)
                .map_err(GuardError::map(names::BUDGETS))?;
        }
        for (len, addr) in old_trusted.v4.difference(&new_trusted.v4) {
            self.trusted_v4
                .remove(&Key::new(*len, *addr))
                .map_err(GuardError::map(names::TRUSTED_V4))?;
        }
        for (len, addr) in old_trusted.v6.difference(&new_trusted.v6) {
            self.trusted_v6
                .remove(&Key::new(*len, *addr))
                .map_err(GuardError::map(names::TRUSTED_V6))?;
        }
        Ok(())
    }
}

/// What the policy maps hold: port rules, open-port sources, trusted sources. Settings and
/// budgets are single slots, overwritten whole.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Contents {
    pub port_rules: BTreeMap<u32, PortRule>,
    pub open_sources: OpenSources,
    pub trusted: Trusted,
}

impl Contents {
    /// The contents a configuration puts in the maps.
    pub fn of(config: &Config) -> Contents {
        Contents {
            port_rules: port_rules(config),
            open_sources: open_sources(config),
            trusted: trusted(&config.budgets),
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
            c.trusted.v4.insert((key.prefix_len(), key.data()));
        }
        for key in self.trusted_v6.keys() {
            let key = key.map_err(GuardError::map(names::TRUSTED_V6))?;
            c.trusted.v6.insert((key.prefix_len(), key.data()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn budgets_become_map_values() {
        let (c, _) = Config::parse(
            "[budgets]\nsyn_ceiling = 1000\nsyn_ceiling_burst = 100\nsource_prefix_v6 = 56\ntrusted = [\"198.18.9.0/24\"]\n[budgets.mx]\nrate = 4\nburst = 8\nmax_connections = 3\naction = \"reject\"\n",
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
        let s = budget_settings(&c.budgets, host);
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
            trusted(&c.budgets).v4.iter().collect::<Vec<_>>(),
            [&(24, [198, 18, 9, 0])]
        );
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
        let s = settings(&c);
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
        assert_eq!(settings(&c).flags, SETTING_MONITOR);
    }
}
