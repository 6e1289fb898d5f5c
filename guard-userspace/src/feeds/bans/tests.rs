//! The rules on a compressed clock: thresholds, windows, escalation, expiry, prefixes,
//! distinct recipients, exemptions, monitor mode, caps, bounded memory.

use super::*;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

fn auth(source: &str) -> Event {
    Event {
        kind: EventKind::AuthFailed,
        source: source.parse().unwrap(),
        count: 1,
        recipient: None,
    }
}

fn unknown_rcpt(source: &str, rcpt: &str) -> Event {
    Event {
        kind: EventKind::UnknownRecipient,
        source: source.parse().unwrap(),
        count: 1,
        recipient: Some(rcpt.to_string()),
    }
}

fn none(_: &IpNet) -> Option<Spared> {
    None
}

fn bans(v: &[Verdict]) -> Vec<(String, u64, String, u32)> {
    v.iter()
        .filter_map(|v| match v {
            Verdict::Ban {
                net,
                seconds,
                rule,
                strike,
            } => Some((net.to_string(), *seconds, rule.clone(), *strike)),
            Verdict::Spared { .. } => None,
        })
        .collect()
}

/// Feeds `n` failures from `source`, one a second from `t`; returns every verdict.
fn failures(j: &mut Judge, source: &str, n: u32, t: u64) -> Vec<Verdict> {
    (0..n as u64)
        .flat_map(|i| j.observe(&auth(source), t + i, &none))
        .collect()
}

#[test]
fn a_typo_or_two_never_bans() {
    let mut j = Judge::new(BanRules::default(), false);
    assert!(failures(&mut j, "198.18.100.7", 2, 1000).is_empty());
    // Again a day later: the window has long slid past the first two.
    assert!(failures(&mut j, "198.18.100.7", 2, 1000 + DAY).is_empty());
    assert!(failures(&mut j, "198.18.100.7", 4, 1000 + 2 * DAY).is_empty());
}

#[test]
fn the_fifth_failure_in_ten_minutes_bans_and_each_offence_lasts_longer() {
    let mut j = Judge::new(BanRules::default(), false);
    let v = failures(&mut j, "198.18.100.7", 5, 1000);
    assert_eq!(
        bans(&v),
        [("198.18.100.7/32".to_string(), 600, "auth".to_string(), 1)]
    );
    // What arrives during the ban (in flight before it) neither bans again nor counts.
    assert!(failures(&mut j, "198.18.100.7", 10, 1010).is_empty());
    // Out again: the next offence is an hour, then a day, then a day.
    let t = 1004 + 600;
    let expected = [(2, HOUR), (3, DAY), (4, DAY)];
    let mut t = t;
    for (strike, seconds) in expected {
        let v = failures(&mut j, "198.18.100.7", 5, t);
        assert_eq!(
            bans(&v),
            [(
                "198.18.100.7/32".to_string(),
                seconds,
                "auth".to_string(),
                strike
            )],
            "offence {strike}"
        );
        t += 4 + seconds;
    }
    assert_eq!(j.active(t - 1), 1);
    assert_eq!(j.active(t), 0, "the last ban has ended");
}

#[test]
fn the_window_slides_and_escalation_is_forgotten() {
    let mut j = Judge::new(BanRules::default(), false);
    assert!(failures(&mut j, "2001:db8::7", 4, 0).is_empty());
    // Ten minutes after the first: it no longer counts.
    assert!(failures(&mut j, "2001:db8::7", 1, 600).is_empty());
    assert_eq!(bans(&failures(&mut j, "2001:db8::7", 1, 601)).len(), 0);
    let v = failures(&mut j, "2001:db8::7", 5, 2000);
    assert_eq!(bans(&v)[0].3, 1);
    // A week after that ban ended, its escalation is forgotten: ten minutes again.
    let v = failures(&mut j, "2001:db8::7", 5, 2004 + 600 + 7 * DAY);
    assert_eq!(
        bans(&v),
        [("2001:db8::7/128".to_string(), 600, "auth".to_string(), 1)]
    );
}

#[test]
fn neighbours_rotating_through_a_prefix_ban_the_prefix() {
    let mut j = Judge::new(BanRules::default(), false);
    let mut verdicts = Vec::new();
    // Twenty addresses of one /24, one failure each: no address reaches 5.
    for i in 1..=20 {
        verdicts.extend(j.observe(&auth(&format!("198.18.100.{i}")), 100 + i, &none));
    }
    assert_eq!(
        bans(&verdicts),
        [(
            "198.18.100.0/24".to_string(),
            600,
            "auth_net".to_string(),
            1
        )]
    );
    // IPv6: twenty addresses of one /64.
    let mut verdicts = Vec::new();
    for i in 1..=20 {
        verdicts.extend(j.observe(&auth(&format!("2001:db8:1:2::{i:x}")), 200 + i, &none));
    }
    assert_eq!(bans(&verdicts)[0].0, "2001:db8:1:2::/64");
}

#[test]
fn harvesting_counts_distinct_recipients() {
    let mut j = Judge::new(BanRules::default(), false);
    // A sender with two unknown recipients, each sent a few times.
    for i in 0..6 {
        let rcpt = if i % 2 == 0 {
            "old@example.test"
        } else {
            "typo@example.test"
        };
        assert!(
            j.observe(&unknown_rcpt("198.18.100.20", rcpt), i, &none)
                .is_empty()
        );
    }
    // A harvester: 50 recipients; banned at the tenth distinct one, for an hour.
    let mut verdicts = Vec::new();
    for i in 0..50 {
        let rcpt = format!("user{i}@example.test");
        verdicts.extend(j.observe(&unknown_rcpt("198.18.100.21", &rcpt), 100 + i, &none));
    }
    assert_eq!(
        bans(&verdicts),
        [(
            "198.18.100.21/32".to_string(),
            HOUR,
            "harvest".to_string(),
            1
        )]
    );
}

#[test]
fn the_provider_trusted_sources_and_live_sessions_are_spared() {
    let provider: IpNet = "198.18.100.0/24".parse().unwrap();
    let spare = move |net: &IpNet| {
        (provider.contains(net) || net.contains(&provider)).then_some(Spared::MxAllow)
    };
    let mut j = Judge::new(BanRules::default(), false);
    let mut verdicts = Vec::new();
    for i in 0..50 {
        let rcpt = format!("user{i}@example.test");
        verdicts.extend(j.observe(&unknown_rcpt("198.18.100.30", &rcpt), i, &spare));
    }
    assert!(bans(&verdicts).is_empty());
    // Reported each time the rule fires (for the log), never banned.
    assert!(!verdicts.is_empty());
    assert!(verdicts.iter().all(|v| matches!(
        v,
        Verdict::Spared {
            why: Spared::MxAllow,
            ..
        }
    )));
}

#[test]
fn monitor_mode_fires_and_bans_nothing() {
    let mut j = Judge::new(BanRules::default(), true);
    let v = failures(&mut j, "198.18.100.7", 5, 0);
    assert_eq!(
        v,
        [Verdict::Spared {
            net: "198.18.100.7/32".parse().unwrap(),
            rule: "auth".into(),
            why: Spared::Monitor
        }]
    );
    assert_eq!(j.active(1), 0);
}

#[test]
fn bans_are_capped_per_minute_and_in_total() {
    let rules = BanRules {
        max_per_minute: 2,
        max_active: 3,
        ..BanRules::default()
    };
    let mut j = Judge::new(rules, false);
    let mut outcome = Vec::new();
    for (i, t) in [(1, 60), (2, 61), (3, 62), (4, 120), (5, 121), (6, 180)] {
        let v = failures(&mut j, &format!("198.18.{i}.7"), 5, t);
        outcome.push(match &v[..] {
            [Verdict::Ban { .. }] => "ban",
            [
                Verdict::Spared {
                    why: Spared::Capped,
                    ..
                },
            ] => "capped",
            other => panic!("{other:?}"),
        });
    }
    // Two a minute; then three in force at most.
    assert_eq!(outcome, ["ban", "ban", "capped", "ban", "capped", "capped"]);
}

#[test]
fn memory_stays_bounded_under_many_sources() {
    let rules = BanRules {
        max_tracked: 1000,
        ..BanRules::default()
    };
    let mut j = Judge::new(rules, false);
    for i in 0..20_000u32 {
        let a = std::net::Ipv4Addr::from(0xC612_0000 | i); // 198.18.0.0/15
        j.observe(&auth(&a.to_string()), u64::from(i / 100), &none);
    }
    assert!(j.windows.len() <= 1000, "{}", j.windows.len());
    assert!(j.dropped_windows > 0);
}

#[test]
fn what_the_rules_remember_survives_a_restart_and_a_pardon_counts_again() {
    let mut j = Judge::new(BanRules::default(), false);
    assert!(failures(&mut j, "198.18.100.9", 3, 1000).is_empty());
    let first = failures(&mut j, "198.18.100.8", 5, 1000);
    assert_eq!(bans(&first)[0].3, 1);
    // A restart: the memory goes through JSON, as it is saved.
    let saved = serde_json::to_string(&j.memory()).unwrap();
    let mut j = Judge::new(BanRules::default(), false);
    j.remember(serde_json::from_str(&saved).unwrap(), 1010);
    assert_eq!(j.active(1010), 1, "the ban in force is remembered");
    // Two more failures finish what three began before the restart: nothing is lost.
    let after = failures(&mut j, "198.18.100.9", 2, 1010);
    assert_eq!(bans(&after).len(), 1, "{after:?}");
    // The operator lifts the first ban: its next offence is its second.
    j.pardon(&"198.18.100.8/32".parse().unwrap(), 1020);
    let again = failures(&mut j, "198.18.100.8", 5, 1030);
    assert_eq!(bans(&again)[0].3, 2, "{again:?}");
    assert_eq!(bans(&again)[0].1, HOUR);
}
