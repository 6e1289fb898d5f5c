//! Turns a `Config` (and the lists' fetched entries) into the contents of the policy maps
//! (`Contents`); `policy_maps.rs` writes them.

use std::collections::{BTreeMap, BTreeSet};

use guard_common::{
    BUDGET_ACTIVE, BUDGET_REJECT, BudgetSettings, ClassBudget, Gcra, MailClass,
    OPEN_SOURCE_PREFIX_BITS, OpenSourceV4, OpenSourceV6, PortRule, SETTING_BLOCK_V4_USED,
    SETTING_BLOCK_V6_USED, SETTING_ECHO_ALLOW, SETTING_MONITOR, SETTING_MX_ONLY, Settings,
    TRUSTED_V4_USED, TRUSTED_V6_USED, Transport, port_rule_index, prefix_mask, source_buckets,
};
use ipnet::IpNet;

use super::policy_maps::{v4_bytes, v6_bytes};
use crate::{
    config::budgets::{Action, Budgets, ClassLimits},
    config::lists::ListName,
    config::{Config, EchoPolicy},
};

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
    let (cookies, cookie_mss) = super::cookies::settings_words(
        config,
        &super::cookies::CookieEnv::read(config.interface.as_deref()),
    );
    Settings {
        flags,
        index,
        cookies,
        cookie_mss,
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

/// Both versions of a list (for the "has entries" flags while a swap runs).
pub(super) fn merged(a: &AddrList, b: &AddrList) -> AddrList {
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
