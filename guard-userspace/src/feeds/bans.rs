//! The ban rules: events from the mail logs (`maillog`) counted per source, and per /24 and
//! /64 (botnets rotate neighbours), within a sliding window; a rule that reaches its
//! threshold bans the source or prefix, for longer each time it offends again. Sources the
//! operator needs are never banned (the caller says which: the MX allowlist, trusted
//! sources, live sessions), bans are capped per minute and in total, and in monitor mode
//! rules fire and are reported without banning. The clock is passed in, so that escalation
//! and expiry can be tested on a compressed one.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::config::bans::{BanRules, EventKind, Rule};
use crate::feeds::maillog::Event;

const MINUTE: u64 = 60;

/// Why a rule that fired banned nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spared {
    /// The host itself or a prefix holding one of its addresses (its own network).
    Local,
    /// In the MX allowlist: the filtering provider relays everyone's mail.
    MxAllow,
    Trusted,
    /// The operator's own live session would be cut.
    LiveSession,
    Monitor,
    /// Over `max_per_minute` or `max_active`.
    Capped,
}

impl Spared {
    pub fn name(self) -> &'static str {
        match self {
            Spared::Local => "local",
            Spared::MxAllow => "mx_allow",
            Spared::Trusted => "trusted",
            Spared::LiveSession => "live_session",
            Spared::Monitor => "monitor",
            Spared::Capped => "capped",
        }
    }
}

/// What a rule that fired decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Block `net` for `seconds` (its `strike`-th offence under `rule`).
    Ban {
        net: IpNet,
        seconds: u64,
        rule: String,
        strike: u32,
    },
    /// The rule fired and `net` was not banned, for `why`.
    Spared {
        net: IpNet,
        rule: String,
        why: Spared,
    },
}

/// One source's or prefix's events under one rule, within the window.
#[derive(Default)]
struct Window {
    /// (time, count, recipient hash) in arrival order.
    events: VecDeque<(u64, u32, u64)>,
    last: u64,
}

impl Window {
    fn expire(&mut self, now: u64, window: u64) {
        while self
            .events
            .front()
            .is_some_and(|(t, _, _)| t.saturating_add(window) <= now)
        {
            self.events.pop_front();
        }
    }

    fn count(&self, distinct: bool) -> u32 {
        if distinct {
            let mut seen: Vec<u64> = self.events.iter().map(|(_, _, r)| *r).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() as u32
        } else {
            self.events.iter().map(|(_, n, _)| *n).sum()
        }
    }
}

/// An offender's history under one rule.
struct Offender {
    strikes: u32,
    banned_until: u64,
}

/// The rules' state: counts, offenders, bans in force.
pub struct Judge {
    rules: BanRules,
    monitor: bool,
    windows: HashMap<(usize, IpNet), Window>,
    offenders: HashMap<(usize, IpNet), Offender>,
    /// When each ban in force ends.
    active: Vec<u64>,
    /// Bans of the current minute: (minute, count).
    this_minute: (u64, u32),
    /// Counts dropped for `max_tracked`.
    pub dropped_windows: u64,
}

impl Judge {
    pub fn new(rules: BanRules, monitor: bool) -> Judge {
        Judge {
            rules,
            monitor,
            windows: HashMap::new(),
            offenders: HashMap::new(),
            active: Vec::new(),
            this_minute: (0, 0),
            dropped_windows: 0,
        }
    }

    /// Counts `event` at `now` (Unix seconds) under every rule of its kind, and returns what
    /// the rules that fired decided. `spare` says whether a net must not be banned (and why).
    pub fn observe(
        &mut self,
        event: &Event,
        now: u64,
        spare: &dyn Fn(&IpNet) -> Option<Spared>,
    ) -> Vec<Verdict> {
        let mut verdicts = Vec::new();
        let recipient = event.recipient.as_deref().map(hash).unwrap_or(0);
        for index in 0..self.rules.rules.len() {
            let rule = &self.rules.rules[index];
            if rule.kind != event.kind || rule.threshold == 0 {
                continue;
            }
            let net = prefix(event.source, rule.prefix_v4, rule.prefix_v6);
            let key = (index, net);
            if self
                .offenders
                .get(&key)
                .is_some_and(|o| o.banned_until > now)
            {
                // Still banned: what arrives now was in flight before the ban.
                continue;
            }
            let window = self.windows.entry(key).or_default();
            window.expire(now, rule.window);
            window.events.push_back((now, event.count, recipient));
            window.last = now;
            // Bounded: a window never holds more entries than its threshold needs.
            while window.events.len() > rule.threshold as usize * 4 {
                window.events.pop_front();
            }
            if window.count(rule.distinct) < rule.threshold {
                continue;
            }
            self.windows.remove(&key);
            verdicts.push(self.fire(index, net, now, spare));
        }
        self.bound(now);
        verdicts
    }

    fn fire(
        &mut self,
        index: usize,
        net: IpNet,
        now: u64,
        spare: &dyn Fn(&IpNet) -> Option<Spared>,
    ) -> Verdict {
        let rule = &self.rules.rules[index];
        let name = rule.name.clone();
        let spared = |why| Verdict::Spared {
            net,
            rule: name.clone(),
            why,
        };
        if let Some(why) = spare(&net) {
            return spared(why);
        }
        if self.monitor {
            return spared(Spared::Monitor);
        }
        self.active.retain(|end| *end > now);
        let minute = now / MINUTE;
        if self.this_minute.0 != minute {
            self.this_minute = (minute, 0);
        }
        if self.this_minute.1 >= self.rules.max_per_minute
            || self.active.len() >= self.rules.max_active as usize
        {
            return spared(Spared::Capped);
        }
        let forget_after = self.rules.forget_after;
        let offender = self.offenders.entry((index, net)).or_insert(Offender {
            strikes: 0,
            banned_until: 0,
        });
        if offender.strikes > 0 && offender.banned_until.saturating_add(forget_after) <= now {
            offender.strikes = 0;
        }
        let strike = offender.strikes.saturating_add(1);
        let steps = &rule.escalation;
        let seconds = steps
            .get(strike as usize - 1)
            .or(steps.last())
            .copied()
            .unwrap_or(10 * MINUTE);
        offender.strikes = strike;
        offender.banned_until = now.saturating_add(seconds);
        self.active.push(now.saturating_add(seconds));
        self.this_minute.1 += 1;
        Verdict::Ban {
            net,
            seconds,
            rule: name,
            strike,
        }
    }

    /// Keeps the counts within `max_tracked`: windows with nothing left in them go first,
    /// then the least recently seen (down to 90% of it); forgotten offenders go too.
    fn bound(&mut self, now: u64) {
        let max = self.rules.max_tracked;
        if self.windows.len() > max {
            let rules = &self.rules.rules;
            self.windows.retain(|(i, _), w| {
                w.expire(now, rules[*i].window);
                !w.events.is_empty()
            });
        }
        if self.windows.len() > max {
            let mut by_age: Vec<(u64, (usize, IpNet))> =
                self.windows.iter().map(|(k, w)| (w.last, *k)).collect();
            by_age.sort_unstable();
            // Down to 90%, so that this sort happens once in many events, not on each.
            let excess = self.windows.len() - (max - max / 10);
            for (_, key) in by_age.into_iter().take(excess) {
                self.windows.remove(&key);
                self.dropped_windows += 1;
            }
        }
        if self.offenders.len() > max {
            let forget = self.rules.forget_after;
            self.offenders
                .retain(|_, o| o.banned_until.saturating_add(forget) > now);
        }
    }

    /// Bans in force at `now`.
    pub fn active(&self, now: u64) -> usize {
        self.active.iter().filter(|end| **end > now).count()
    }

    /// The ends of the bans in force (the saved ones at a start, what is left after the
    /// operator lifted some): what `max_active` counts.
    pub fn in_force(&mut self, ends: Vec<u64>) {
        self.active = ends;
    }

    /// The bans in force, as the offenders' ends say.
    fn active_from_offenders(&mut self, now: u64) {
        self.active = self
            .offenders
            .values()
            .map(|o| o.banned_until)
            .filter(|end| *end > now)
            .collect();
    }

    /// Windows (sources and prefixes with counts) kept now.
    pub fn tracked(&self) -> usize {
        self.windows.len()
    }

    /// The operator lifted the ban on `net`: what it does from now on counts again (its
    /// offences so far still escalate the next ban).
    pub fn pardon(&mut self, net: &IpNet, now: u64) {
        for ((_, n), o) in self.offenders.iter_mut() {
            if n == net && o.banned_until > now {
                o.banned_until = now;
            }
        }
        self.active_from_offenders(now);
    }

    /// What the rules remember (counts in their windows, offenders), to be saved with the
    /// place in the logs they were counted to.
    pub fn memory(&self) -> Memory {
        let name = |i: usize| self.rules.rules[i].name.clone();
        let mut windows: Vec<SavedWindow> = self
            .windows
            .iter()
            .map(|((i, net), w)| SavedWindow {
                rule: name(*i),
                net: *net,
                events: w.events.iter().copied().collect(),
            })
            .collect();
        windows.sort_by(|a, b| (&a.rule, a.net).cmp(&(&b.rule, b.net)));
        let mut offenders: Vec<SavedOffender> = self
            .offenders
            .iter()
            .map(|((i, net), o)| SavedOffender {
                rule: name(*i),
                net: *net,
                strikes: o.strikes,
                banned_until: o.banned_until,
            })
            .collect();
        offenders.sort_by(|a, b| (&a.rule, a.net).cmp(&(&b.rule, b.net)));
        Memory { windows, offenders }
    }

    /// Takes up what `memory` saved (after a restart or a reload); what belongs to a rule that
    /// is gone is forgotten.
    pub fn remember(&mut self, memory: Memory, now: u64) {
        let index = |rule: &str| self.rules.rules.iter().position(|r| r.name == rule);
        for w in memory.windows {
            if let Some(i) = index(&w.rule) {
                let last = w.events.iter().map(|e| e.0).max().unwrap_or(0);
                self.windows.insert(
                    (i, w.net),
                    Window {
                        events: w.events.into(),
                        last,
                    },
                );
            }
        }
        for o in memory.offenders {
            if let Some(i) = index(&o.rule) {
                self.offenders.insert(
                    (i, o.net),
                    Offender {
                        strikes: o.strikes,
                        banned_until: o.banned_until,
                    },
                );
            }
        }
        self.active_from_offenders(now);
        self.bound(now);
    }
}

/// What the rules remember, as saved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub windows: Vec<SavedWindow>,
    pub offenders: Vec<SavedOffender>,
}

/// A window's events: (time, count, recipient hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWindow {
    pub rule: String,
    pub net: IpNet,
    pub events: Vec<(u64, u32, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedOffender {
    pub rule: String,
    pub net: IpNet,
    pub strikes: u32,
    pub banned_until: u64,
}

/// `source` cut to the rule's prefix (IPv4 /`v4`, IPv6 /`v6`).
fn prefix(source: IpAddr, v4: u8, v6: u8) -> IpNet {
    let len = if source.is_ipv4() { v4 } else { v6 };
    IpNet::new(source, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(source))
}

/// FNV-1a: the same on every run, so that saved counts of distinct recipients stay right.
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
