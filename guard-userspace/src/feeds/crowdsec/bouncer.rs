//! The bouncer's thread: reads the LAPI's decision stream every poll interval (everything at
//! the start, after any failure, and every resync interval; otherwise what changed), and hands
//! each answer to the daemon with a wake-up on a descriptor the serve loop waits on. Failures
//! back off (the poll interval doubled each time, up to five minutes); the daemon keeps the
//! decisions in force meanwhile. An answer the daemon's maps refused (a set larger than the
//! block list) is told back: the next read is a full one, after the same backoff.

use std::{
    os::{fd::AsRawFd, unix::net::UnixStream},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use crate::{
    config::crowdsec::Crowdsec,
    feeds::crowdsec::{
        decisions::{StreamAnswer, parse_stream},
        lapi::{Lapi, LapiError},
    },
    feeds::saved::now_unix,
};

/// What one read of the stream gave.
#[derive(Debug)]
pub enum Report {
    Answer {
        answer: StreamAnswer,
        /// Everything the LAPI holds (replaces the set), or a delta.
        full: bool,
        /// Unix seconds.
        at: u64,
        took: Duration,
    },
    Failed {
        error: LapiError,
        at: u64,
        /// When the next attempt comes.
        retry_in: Duration,
    },
}

/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The wait before the next attempt after `in_a_row` failures: the poll interval doubled for
/// each after the first, at most `MAX_BACKOFF`.
fn backoff(poll: Duration, in_a_row: u64) -> Duration {
    poll.saturating_mul(1 << (in_a_row.clamp(1, 17) - 1))
        .min(MAX_BACKOFF)
}

/// What the daemon tells the thread.
enum Ask {
    /// The maps refused an answer (`in_a_row` failures and refusals so far): read everything
    /// again, after the backoff.
    Refused { in_a_row: u64 },
}

/// The daemon's side: reports, the descriptor that wakes it, and the thread (ended on drop).
pub struct Bouncer {
    rx: mpsc::Receiver<Report>,
    wake: UnixStream,
    /// Dropping it ends the thread at its next wait.
    asks: mpsc::Sender<Ask>,
}

impl Bouncer {
    /// Starts reading the LAPI `config` names. Fails (and nothing starts) when the key or CA
    /// file cannot be read.
    pub fn start(config: &Crowdsec) -> Result<Bouncer, LapiError> {
        let lapi = Lapi::new(config)?;
        let (wake, wake_tx) = UnixStream::pair().map_err(|e| LapiError::Unreachable {
            url: config.lapi_url.clone(),
            reason: format!("no socket pair for the bouncer thread: {e}"),
        })?;
        let _ = wake.set_nonblocking(true);
        let _ = wake_tx.set_nonblocking(true);
        let (tx, rx) = mpsc::channel();
        let (asks, asks_rx) = mpsc::channel::<Ask>();
        let url = config.lapi_url.clone();
        let config = config.clone();
        thread::Builder::new()
            .name("crowdsec".into())
            .spawn(move || run(&lapi, &config, &tx, &wake_tx, &asks_rx))
            .map_err(|e| LapiError::Unreachable {
                url,
                reason: format!("cannot start the bouncer thread: {e}"),
            })?;
        Ok(Bouncer { rx, wake, asks })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.wake.as_raw_fd()
    }

    /// The maps refused the last answer (`in_a_row` failures and refusals so far).
    pub fn refused(&self, in_a_row: u64) {
        let _ = self.asks.send(Ask::Refused { in_a_row });
    }

    /// Every report waiting now.
    pub fn drain(&self) -> Vec<Report> {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut &self.wake, &mut buf), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }
}

fn run(
    lapi: &Lapi,
    config: &Crowdsec,
    tx: &mpsc::Sender<Report>,
    wake: &UnixStream,
    asks: &mpsc::Receiver<Ask>,
) {
    let poll = Duration::from_secs(config.poll_interval);
    let resync = Duration::from_secs(config.resync_interval);
    let mut full_due = Instant::now();
    let mut failures: u32 = 0;
    loop {
        let full = Instant::now() >= full_due || failures > 0;
        let started = Instant::now();
        let result = lapi.stream(full, config).and_then(|body| {
            parse_stream(&body, config, now_unix()).map_err(|g| LapiError::Garbage {
                url: lapi.url().to_string(),
                reason: g.to_string(),
            })
        });
        let wait = match result {
            Ok(answer) => {
                failures = 0;
                if full {
                    full_due = Instant::now() + resync;
                }
                let report = Report::Answer {
                    answer,
                    full,
                    at: now_unix(),
                    took: started.elapsed(),
                };
                if tx.send(report).is_err() {
                    return;
                }
                poll
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let retry_in = backoff(poll, failures.into());
                let report = Report::Failed {
                    error,
                    at: now_unix(),
                    retry_in,
                };
                if tx.send(report).is_err() {
                    return;
                }
                retry_in
            }
        };
        let _ = std::io::Write::write(&mut &*wake, &[1]);
        let mut next = Instant::now() + wait;
        loop {
            match asks.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Ask::Refused { in_a_row }) => {
                    full_due = Instant::now();
                    next = Instant::now() + backoff(poll, in_a_row);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_poll_interval_up_to_five_minutes() {
        let poll = Duration::from_secs(10);
        let waits: Vec<u64> = (1..=7).map(|n| backoff(poll, n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(backoff(poll, 0), poll);
        assert_eq!(backoff(poll, u64::MAX), MAX_BACKOFF);
    }
}
