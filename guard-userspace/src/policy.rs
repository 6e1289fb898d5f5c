//! Turns a `Config` into the contents of the policy maps, and writes them.

use std::{
    borrow::BorrowMut,
    collections::{BTreeMap, BTreeSet},
};

use aya::maps::{Array, LpmTrie, MapData, lpm_trie::Key};
use guard_common::{
    MailClass, OPEN_SOURCE_PREFIX_BITS, OpenSourceV4, OpenSourceV6, PortRule, SETTING_ECHO_ALLOW,
    SETTING_MONITOR, Settings, Transport, maps as names, port_rule_index,
};
use ipnet::IpNet;

use crate::{
    config::{Config, EchoPolicy},
    guard::GuardError,
};

/// The policy maps of a loaded or pinned program.
pub struct PolicyMaps<T> {
    pub settings: Array<T, Settings>,
    pub ports: Array<T, PortRule>,
    pub open_v4: LpmTrie<T, OpenSourceV4, u8>,
    pub open_v6: LpmTrie<T, OpenSourceV6, u8>,
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
        let old_sources = old.map(open_sources).unwrap_or_default();
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

        let old_rules = old.map(port_rules).unwrap_or_default();
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

        self.settings
            .set(0, settings(new), 0)
            .map_err(GuardError::map(names::SETTINGS))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

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
