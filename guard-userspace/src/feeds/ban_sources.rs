//! Where ban events come from, each read on its own thread and handed to the daemon in
//! batches, with the place in the source after them: followed log files (`follow.rs`), the
//! journal (`journalctl`, `journal.rs`) and Dovecot's policy reports (`auth_policy.rs`). A
//! batch wakes the daemon at once (`Inbox::fd`), so that a ban follows its event within
//! milliseconds. The daemon moves its saved places on only as it counts the batches, so what
//! it had not counted when it stopped is read again at the next start.

use std::{
    io::{BufRead, BufReader, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use crate::feeds::{
    follow::{Checkpoint, Follower, wake::DirWatch},
    journal,
    maillog::{self, Parsed},
};

/// How long a file follower waits for inotify before reading anyway (inotify wakes it at
/// once on a write; this covers file systems where it does not).
pub const FILE_POLL: Duration = Duration::from_millis(250);

/// Batches waiting for the daemon at most; a source waits while the daemon catches up.
const QUEUE: usize = 10_000;

/// Where events came from (a metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    Journal,
    File,
    Policy,
}

impl SourceKind {
    pub fn name(self) -> &'static str {
        match self {
            SourceKind::Journal => "journal",
            SourceKind::File => "file",
            SourceKind::Policy => "policy",
        }
    }
}

/// The place in a source after a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    File(PathBuf, Checkpoint),
    Journal(String),
    /// Policy reports: nothing to go back to.
    Live,
}

/// Lines (or reports) read together.
#[derive(Debug)]
pub struct Batch {
    pub kind: SourceKind,
    pub parsed: Vec<Parsed>,
    pub position: Position,
    /// When they were read: the start of the time from event to ban.
    pub read_at: Instant,
    /// The sources' generation that read them (`Inbox::start_logs`).
    generation: u64,
}

/// The sending side, shared by every source thread.
#[derive(Clone)]
pub struct Sender {
    tx: mpsc::SyncSender<Batch>,
    wake: Arc<UnixStream>,
    generation: u64,
}

impl Sender {
    /// Hands what was read to the daemon; false once the daemon no longer listens.
    pub fn send(
        &self,
        kind: SourceKind,
        parsed: Vec<Parsed>,
        position: Position,
        read_at: Instant,
    ) -> bool {
        let batch = Batch {
            kind,
            parsed,
            position,
            read_at,
            generation: self.generation,
        };
        if self.tx.send(batch).is_err() {
            return false;
        }
        // A full socket buffer already wakes the daemon: that write may be dropped.
        let _ = (&*self.wake).write(&[1]);
        true
    }
}

/// The daemon's side: batches, and the descriptor that becomes readable when one arrives.
pub struct Inbox {
    rx: mpsc::Receiver<Batch>,
    wake: UnixStream,
    sender: Sender,
}

/// The log sources' threads of one generation: stopped (and their journalctl ended) when
/// dropped. What they read after a newer generation started is not counted.
pub struct LogSources {
    stop: Arc<AtomicBool>,
    journalctl: Option<Arc<std::sync::Mutex<Option<Child>>>>,
    sender: Sender,
}

impl Inbox {
    pub fn new() -> std::io::Result<Inbox> {
        let (wake, wake_tx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        Ok(Inbox {
            rx,
            wake,
            sender: Sender {
                tx,
                wake: Arc::new(wake_tx),
                generation: 0,
            },
        })
    }

    /// A sender for sources that are never restarted (the policy server).
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// A new generation of log sources; batches of older ones are dropped from now on.
    pub fn start_logs(&mut self) -> LogSources {
        self.sender.generation += 1;
        LogSources {
            stop: Arc::new(AtomicBool::new(false)),
            journalctl: None,
            sender: self.sender.clone(),
        }
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.wake.as_raw_fd()
    }

    /// Every batch waiting now.
    pub fn drain(&self) -> Vec<Batch> {
        let mut buf = [0u8; 256];
        while matches!(std::io::Read::read(&mut &self.wake, &mut buf), Ok(n) if n > 0) {}
        let current = self.sender.generation;
        self.rx
            .try_iter()
            .filter(|b| b.generation == current || b.position == Position::Live)
            .collect()
    }
}

impl LogSources {
    /// Follows `path` from `checkpoint` (none: from its end) on a thread.
    pub fn follow_file(&self, path: PathBuf, checkpoint: Option<Checkpoint>) {
        let sender = self.sender.clone();
        let stop = self.stop.clone();
        let spawned = thread::Builder::new()
            .name("bans-file".into())
            .spawn(move || {
                let mut follower = Follower::new(&path, checkpoint);
                let watch = DirWatch::new(&path);
                if watch.is_none() {
                    log::warn!(
                        "bans: no inotify for {}: reading it every 20 ms instead",
                        path.display()
                    );
                }
                let mut failing = false;
                while !stop.load(Ordering::Relaxed) {
                    match follower.poll() {
                        Ok(lines) if !lines.is_empty() => {
                            failing = false;
                            let read_at = Instant::now();
                            let parsed = lines.iter().map(|l| maillog::parse(l)).collect();
                            let position = Position::File(path.clone(), follower.checkpoint());
                            if !sender.send(SourceKind::File, parsed, position, read_at) {
                                return;
                            }
                            continue;
                        }
                        Ok(_) => failing = false,
                        Err(e) => {
                            if !failing {
                                log::error!("bans: reading {}: {e} (trying again)", path.display());
                            }
                            failing = true;
                        }
                    }
                    match &watch {
                        Some(w) => w.wait(FILE_POLL),
                        None => thread::sleep(Duration::from_millis(20)),
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("bans: cannot follow a file: {e}");
        }
    }

    /// Follows the journal's mail facility from `cursor` (none: from now) on a thread, through
    /// `journalctl`, started again when it ends.
    pub fn follow_journal(&mut self, cursor: Option<String>) {
        let sender = self.sender.clone();
        let stop = self.stop.clone();
        let child_slot = Arc::new(std::sync::Mutex::new(None::<Child>));
        self.journalctl = Some(child_slot.clone());
        let spawned = thread::Builder::new()
            .name("bans-journal".into())
            .spawn(move || {
                let mut cursor = cursor;
                let since = crate::feeds::saved::now_unix();
                let mut reported = false;
                while !stop.load(Ordering::Relaxed) {
                    let child = Command::new("journalctl")
                        .args(journal::journalctl_args(cursor.as_deref(), since))
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn();
                    let mut child = match child {
                        Ok(c) => c,
                        Err(e) => {
                            if !reported {
                                log::error!("bans: cannot run journalctl: {e} (trying again)");
                                reported = true;
                            }
                            thread::sleep(Duration::from_secs(5));
                            continue;
                        }
                    };
                    let stdout = child.stdout.take().expect("piped");
                    // What journalctl says (a journal it cannot read, say) goes to the log.
                    if let Some(stderr) = child.stderr.take() {
                        let _ = thread::Builder::new()
                            .name("bans-journalctl-err".into())
                            .spawn(move || {
                                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                                    log::warn!("bans: journalctl: {line}");
                                }
                            });
                    }
                    *child_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
                    for line in BufReader::new(stdout).lines() {
                        let Ok(line) = line else { break };
                        let read_at = Instant::now();
                        let Some((text, at)) = journal::record_line(&line) else {
                            continue;
                        };
                        cursor = Some(at.clone());
                        let parsed = vec![maillog::parse(&text)];
                        let position = Position::Journal(at);
                        if !sender.send(SourceKind::Journal, parsed, position, read_at) {
                            return;
                        }
                    }
                    if let Some(mut c) = child_slot.lock().unwrap_or_else(|p| p.into_inner()).take()
                    {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    if !stop.load(Ordering::Relaxed) {
                        log::warn!("bans: journalctl ended; starting it again");
                        thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = spawned {
            log::error!("bans: cannot follow the journal: {e}");
        }
    }
}

impl Drop for LogSources {
    /// Stops the source threads (each at its next turn) and the journalctl this started.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(slot) = &self.journalctl
            && let Some(mut c) = slot.lock().unwrap_or_else(|p| p.into_inner()).take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
