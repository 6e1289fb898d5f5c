//! Sources the budgets refuse, for the CrowdSec agent (`crowdsec.share_refused`). Every
//! `REFUSAL_WINDOW` seconds the daemon reads the refusal count XDP keeps per source and class
//! (`SourceState::refused`, in the `SOURCES` table, for refusals over the rate and at the
//! connection cap alike). A source refused at least `share_refused` times since the last reading
//! (its classes together) becomes a finding the agent pushes to the LAPI, once for as long as
//! the decision it asks for lasts.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use guard_common::{FAMILY_V6, SourceKey, SourceSlot};
use ipnet::IpNet;

use crate::{config::crowdsec::REFUSAL_WINDOW, feeds::crowdsec::agent::Finding};

/// The rule name of these findings (the alert's scenario is `mailguard/budget`).
pub const BUDGET_RULE: &str = "budget";

#[derive(Default)]
pub struct RefusalWatch {
    /// Refusal counts per source and class at the last reading (those above zero); `None`
    /// before the first reading, which only takes the counts.
    last: Option<HashMap<SourceKey, u32>>,
    /// Sources pushed, and when the decision asked for ends (Unix seconds).
    shared: HashMap<IpNet, u64>,
    read_at: Option<Instant>,
}

/// What sharing asks for.
#[derive(Clone, Copy)]
pub struct Threshold {
    /// Refusals within the window.
    pub refused: u32,
    /// The decision's length, in seconds.
    pub seconds: u64,
    /// The budgets' source prefixes (IPv4, IPv6): a source is a /32 or a /64 by default.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl RefusalWatch {
    /// Whether a reading is due.
    pub fn due(&self) -> bool {
        self.read_at
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(REFUSAL_WINDOW))
    }

    /// Reads the slots in use; returns the sources to share (`now`: Unix seconds).
    pub fn read(
        &mut self,
        slots: impl Iterator<Item = SourceSlot>,
        t: Threshold,
        now: u64,
    ) -> Vec<Finding> {
        self.read_at = Some(Instant::now());
        let counts: HashMap<SourceKey, u32> = slots
            .filter(|s| s.state.refused > 0)
            .map(|s| (s.key, s.state.refused))
            .collect();
        let Some(last) = self.last.replace(counts) else {
            return Vec::new();
        };
        let counts = self.last.as_ref().expect("just set");
        // Refused since the last reading, per source (its classes together). A count below the
        // last one is a slot claimed again: all of it is new.
        let mut by_net: HashMap<IpNet, u64> = HashMap::new();
        for (key, &n) in counts {
            let before = last.get(key).copied().filter(|&b| b <= n).unwrap_or(0);
            if n > before {
                *by_net.entry(net_of(key, t)).or_default() += u64::from(n - before);
            }
        }
        self.shared.retain(|_, until| *until > now);
        let mut out = Vec::new();
        for (net, refused) in by_net {
            if refused < u64::from(t.refused) || self.shared.contains_key(&net) {
                continue;
            }
            self.shared.insert(net, now.saturating_add(t.seconds));
            out.push(Finding {
                net,
                rule: BUDGET_RULE.into(),
                since: now,
                seconds: t.seconds,
                what: format!(
                    "refused {refused} new connections by its budget (rate or connection cap) within {REFUSAL_WINDOW} s"
                ),
            });
        }
        out.sort_by_key(|f| f.net);
        out
    }
}

fn net_of(key: &SourceKey, t: Threshold) -> IpNet {
    let (addr, prefix) = if key.family == FAMILY_V6 {
        (IpAddr::from(key.addr), t.prefix_v6)
    } else {
        let a = key.addr;
        (IpAddr::from([a[0], a[1], a[2], a[3]]), t.prefix_v4)
    };
    IpNet::new(addr, prefix).map_or_else(|_| IpNet::from(addr), |n| n.trunc())
}

#[cfg(test)]
mod tests {
    use guard_common::{MailClass, SourceState};

    use super::*;

    const T: Threshold = Threshold {
        refused: 10,
        seconds: 3600,
        prefix_v4: 32,
        prefix_v6: 64,
    };

    fn slot(addr: IpAddr, class: MailClass, refused: u32) -> SourceSlot {
        let key = match addr {
            IpAddr::V4(a) => SourceKey::v4(a.octets(), [255; 4], class as u8),
            IpAddr::V6(a) => {
                let mut mask = [0u8; 16];
                mask[..8].fill(255);
                SourceKey::v6(a.octets(), mask, class as u8)
            }
        };
        SourceSlot {
            key,
            state: SourceState {
                refused,
                ..SourceState::default()
            },
            ..SourceSlot::default()
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refusals_within_the_window_over_the_threshold_are_shared_once() {
        let mut w = RefusalWatch::default();
        let a = ip("198.18.0.66");
        // The first reading only takes the counts, however high.
        assert!(
            w.read([slot(a, MailClass::Mx, 500)].into_iter(), T, 1000)
                .is_empty()
        );
        // 9 more: below the threshold.
        assert!(
            w.read([slot(a, MailClass::Mx, 509)].into_iter(), T, 1005)
                .is_empty()
        );
        // 6 on port 25 and 4 on 587 since: 10, shared.
        let found = w.read(
            [
                slot(a, MailClass::Mx, 515),
                slot(a, MailClass::Submission, 4),
            ]
            .into_iter(),
            T,
            1010,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].net.to_string(), "198.18.0.66/32");
        assert_eq!(found[0].rule, "budget");
        assert_eq!(found[0].seconds, 3600);
        assert!(
            found[0].what.starts_with("refused 10 new connections"),
            "{}",
            found[0].what
        );
        // Still refused: not shared again while its decision lasts, then again.
        let more = |n| [slot(a, MailClass::Mx, n)].into_iter();
        assert!(w.read(more(600), T, 1015).is_empty());
        assert_eq!(w.read(more(700), T, 1010 + 3600).len(), 1);
    }

    #[test]
    fn a_slot_claimed_again_counts_from_zero_and_ipv6_is_its_prefix() {
        let mut w = RefusalWatch::default();
        let v6 = ip("2001:db8:66::1234");
        assert!(
            w.read([slot(v6, MailClass::Mx, 40)].into_iter(), T, 0)
                .is_empty()
        );
        // Evicted and claimed again: 12 refusals since.
        let found = w.read([slot(v6, MailClass::Mx, 12)].into_iter(), T, 5);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].net.to_string(), "2001:db8:66::/64");
        // A source gone from the table is forgotten; sources with no refusal are not kept.
        assert!(
            w.read(
                [slot(ip("198.18.0.7"), MailClass::Mx, 0)].into_iter(),
                T,
                10
            )
            .is_empty()
        );
        assert!(w.last.as_ref().unwrap().is_empty());
    }
}
