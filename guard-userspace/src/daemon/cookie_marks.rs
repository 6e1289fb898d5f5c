//! When the mail listeners are marked as sending SYN cookies (`kernel::listener_marks`), for
//! the cookies XDP makes from a SYN alone: while cookies are needed (`always`, or a flood with
//! `under_flood`), the listeners are read every `CHECK_EVERY` and marked every `MARK_EVERY`,
//! and at once when one of them is new (a mail server restarted opens new listeners, which
//! carry no mark). A marking that failed is tried again at the next check.

use std::time::{Duration, Instant};

use crate::kernel::listener_marks::{Listener, MARK_EVERY};

/// How often the listeners are read while cookies are needed: a restarted mail server's new
/// listeners are marked within about this (and the daemon's half-second turn), while XDP's
/// cookies for them would be refused. A read reads `/proc/net/tcp{,6}` only as far as their
/// listeners, which the kernel lists first: it costs the kernel the listeners, not the host's
/// connections (`listener_marks::listeners`); cookies made from the SYN alone add no entry.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct CookieMarks {
    /// When the listeners were last marked, and which.
    last: Option<(Instant, Vec<Listener>)>,
    checked_at: Option<Instant>,
}

impl CookieMarks {
    /// Whether the listeners are to be read at `now`.
    pub fn check_due(&self, now: Instant) -> bool {
        self.checked_at
            .is_none_or(|t| now.duration_since(t) >= CHECK_EVERY)
    }

    /// Whether `listeners`, read at `now`, are to be marked: never marked, marked
    /// `MARK_EVERY` ago, or not the ones marked last.
    pub fn mark_due(&mut self, now: Instant, listeners: &[Listener]) -> bool {
        self.checked_at = Some(now);
        match &self.last {
            None => true,
            Some((at, marked)) => now.duration_since(*at) >= MARK_EVERY || marked != listeners,
        }
    }

    /// The marking of `listeners` that began at `at` succeeded.
    pub fn marked(&mut self, at: Instant, listeners: Vec<Listener>) {
        self.last = Some((at, listeners));
    }

    /// The ports whose listeners were last marked, ascending.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .last
            .iter()
            .flat_map(|(_, l)| l.iter().map(|l| l.port))
            .collect();
        ports.dedup();
        ports
    }

    /// Whether any marking is remembered.
    pub fn any(&self) -> bool {
        self.last.is_some()
    }

    /// Cookies no longer needed: the next need marks at once.
    pub fn reset(&mut self) {
        *self = CookieMarks::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(port: u16, inode: u64) -> Listener {
        Listener {
            addr: "0.0.0.0".parse().unwrap(),
            port,
            inode,
        }
    }

    #[test]
    fn marks_at_first_need_then_every_minute_and_at_once_for_a_new_listener() {
        let mut m = CookieMarks::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let ours = vec![listener(25, 1), listener(587, 2)];
        assert!(m.check_due(at(0)));
        assert!(m.mark_due(at(0), &ours), "never marked");
        m.marked(at(0), ours.clone());
        assert_eq!(m.ports(), vec![25, 587]);
        let soon = t0 + CHECK_EVERY / 2;
        assert!(
            !m.check_due(soon),
            "listeners are read every {CHECK_EVERY:?}"
        );
        assert!(m.check_due(at(5)));
        assert!(
            !m.mark_due(at(5), &ours),
            "the same listeners, marked 5 s ago"
        );
        assert!(m.mark_due(at(60), &ours), "a minute after the marking");
        m.marked(at(60), ours.clone());
        let restarted = vec![listener(25, 9), listener(587, 2)];
        assert!(
            m.mark_due(at(65), &restarted),
            "a new listener on 25 carries no mark"
        );
        m.reset();
        assert!(!m.any());
        assert!(m.check_due(at(66)) && m.mark_due(at(66), &restarted));
    }

    #[test]
    fn a_failed_marking_is_tried_again_at_the_next_check() {
        let mut m = CookieMarks::default();
        let t0 = Instant::now();
        let ours = vec![listener(25, 1)];
        assert!(m.mark_due(t0, &ours));
        // Not marked: nothing recorded but the check.
        assert!(!m.check_due(t0 + CHECK_EVERY / 2));
        let later = t0 + CHECK_EVERY;
        assert!(m.check_due(later) && m.mark_due(later, &ours));
    }
}
