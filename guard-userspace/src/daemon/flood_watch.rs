//! Whether a SYN flood is on, for `syn_cookies = "under_flood"`: XDP's counts of the SYNs it
//! found over the SYN ceiling (answered with a cookie, unanswerable, or dropped), read every
//! `READ_EVERY`. A flood begins when that count moves, and ends `budgets.syn_cookies_hold`
//! after it last moved. While it is on, the daemon marks the mail listeners as sending cookies
//! (`kernel::listener_marks`; before Linux 6.0 it keeps `net.ipv4.tcp_syncookies` at 2 instead,
//! as the kernel then makes a cookie for XDP only with it: `kernel::syncookie_sysctl`); outside
//! floods the kernel's listeners work as they always did.

use std::time::{Duration, Instant};

use guard_common::Reason;

/// How often the counts are read.
pub const READ_EVERY: Duration = Duration::from_millis(250);

/// The reasons of SYNs XDP found over the ceiling.
pub const OVER_THE_CEILING: [Reason; 3] = [
    Reason::SynCookie,
    Reason::SynCookieUnavailable,
    Reason::SynCeiling,
];

#[derive(Default)]
pub struct FloodWatch {
    /// The count at the last reading (`None` before the first, which only takes it).
    seen: Option<u64>,
    /// When the count last moved.
    moved_at: Option<Instant>,
    read_at: Option<Instant>,
}

impl FloodWatch {
    /// Whether a reading is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.read_at
            .is_none_or(|t| now.duration_since(t) >= READ_EVERY)
    }

    /// Takes a reading of the count (`over`) at `now`; returns whether a flood is on (the count
    /// moved less than `hold` ago). A count lower than the last (the program loaded again)
    /// is a new start, not a flood.
    pub fn observe(&mut self, over: u64, now: Instant, hold: Duration) -> bool {
        if self.seen.is_some_and(|before| over > before) {
            self.moved_at = Some(now);
        }
        self.seen = Some(over);
        self.read_at = Some(now);
        self.flooding(now, hold)
    }

    /// Whether the count moved less than `hold` before `now`.
    pub fn flooding(&self, now: Instant, hold: Duration) -> bool {
        self.moved_at.is_some_and(|t| now.duration_since(t) < hold)
    }

    /// Forgets the flood (cookies turned off or to `always`).
    pub fn reset(&mut self) {
        *self = FloodWatch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOLD: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_reading_is_a_baseline_not_a_flood() {
        let mut w = FloodWatch::default();
        let t0 = Instant::now();
        assert!(!w.observe(1_000_000, t0, HOLD));
        assert!(!w.observe(1_000_000, t0 + READ_EVERY, HOLD));
    }

    #[test]
    fn a_flood_begins_when_the_count_moves_and_ends_a_hold_after_it_last_moved() {
        let mut w = FloodWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        w.observe(5, at(0), HOLD);
        assert!(
            w.observe(6, at(1), HOLD),
            "one SYN over the ceiling begins it"
        );
        assert!(w.observe(900, at(30), HOLD));
        assert!(
            w.observe(900, at(89), HOLD),
            "within the hold of the last move"
        );
        assert!(
            !w.observe(900, at(90), HOLD),
            "a hold after the last move: over"
        );
        assert!(w.observe(901, at(200), HOLD), "and again");
    }

    #[test]
    fn counters_that_went_back_are_a_new_program_not_a_flood() {
        let mut w = FloodWatch::default();
        let t0 = Instant::now();
        w.observe(500, t0, HOLD);
        assert!(!w.observe(0, t0 + Duration::from_secs(1), HOLD));
        assert!(w.observe(3, t0 + Duration::from_secs(2), HOLD));
        w.reset();
        assert!(!w.flooding(t0 + Duration::from_secs(2), HOLD));
    }

    #[test]
    fn readings_are_spaced() {
        let mut w = FloodWatch::default();
        let t0 = Instant::now();
        assert!(w.due(t0));
        w.observe(0, t0, HOLD);
        assert!(!w.due(t0 + READ_EVERY / 2));
        assert!(w.due(t0 + READ_EVERY));
    }
}
