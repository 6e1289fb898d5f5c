//! Following a log file (Postfix's `maillog_file`, rsyslog's `mail.log`) through rotation and
//! truncation, with a checkpoint (the file's inode and the offset after the last whole line
//! read) that lets a restart go on where the last run stopped: no line lost, none read twice.
//!
//! - Rotation by rename (logrotate's default, `create`): the old file is read to its end
//!   before the new one is opened, so lines written to it after the rename (a writer that has
//!   not reopened yet) are not lost; the new file is read from its start.
//! - Truncation (`copytruncate`): a file shorter than the offset is read again from its start.
//! - A restart after a rotation: the checkpoint's inode is looked for in the rotated file
//!   (`NAME.1`), whose rest is read first.
//! - A first start (no checkpoint) begins at the end: old history bans nobody.
//!
//! A line not yet ended by a newline waits for its end.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// Where a follower stands: the file (by inode) and the offset after its last whole line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub inode: u64,
    pub offset: u64,
}

/// A line longer than this is cut there (a log line never is; the rest is skipped).
const MAX_LINE: usize = 16 * 1024;

pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    /// Offset after the last whole line handed out.
    offset: u64,
    /// Bytes read after that: the start of a line not yet ended.
    partial: Vec<u8>,
    /// Bytes of the current line beyond `MAX_LINE`, skipped.
    skipped: u64,
    /// Lines cut at `MAX_LINE`.
    pub cut_lines: u64,
}

fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// The rotated file of `path` (`NAME.1`), logrotate's first generation.
fn rotated(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl Follower {
    /// Follows `path` from `checkpoint` (a first start: from the file's end).
    pub fn new(path: &Path, checkpoint: Option<Checkpoint>) -> Follower {
        let mut f = Follower {
            path: path.to_path_buf(),
            file: None,
            inode: 0,
            offset: 0,
            partial: Vec::new(),
            skipped: 0,
            cut_lines: 0,
        };
        match checkpoint {
            Some(c) if inode_of(path) == Some(c.inode) => f.open(path, c.offset),
            Some(c) if inode_of(&rotated(path)) == Some(c.inode) => {
                // Rotated while we were away: its rest first, then the new file (`poll`).
                f.open(&rotated(path), c.offset)
            }
            // The checkpoint's file is gone: the current file was all written since.
            Some(_) => f.open(path, 0),
            None => {
                let end = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                f.open(path, end)
            }
        }
        f
    }

    fn open(&mut self, path: &Path, offset: u64) {
        self.partial.clear();
        self.skipped = 0;
        match File::open(path) {
            Ok(mut file) => {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let offset = if offset > len { 0 } else { offset };
                let _ = file.seek(SeekFrom::Start(offset));
                self.inode = file.metadata().map(|m| m.ino()).unwrap_or(0);
                self.offset = offset;
                self.file = Some(file);
            }
            Err(_) => {
                // Not there yet: `poll` opens it when it appears.
                self.file = None;
                self.inode = 0;
                self.offset = 0;
            }
        }
    }

    /// Where this follower stands, for the next start.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            inode: self.inode,
            offset: self.offset,
        }
    }

    /// The whole lines written since the last poll, across a rotation or truncation.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut lines = Vec::new();
        self.read_to_end(&mut lines)?;
        let current = inode_of(&self.path);
        if current.is_some() && current != Some(self.inode) {
            // Rotated (or first appeared): the old file was read to its end just now.
            let path = self.path.clone();
            self.open(&path, 0);
            self.read_to_end(&mut lines)?;
        } else if let Some(file) = &self.file {
            let len = file.metadata()?.len();
            if len < self.offset + self.partial.len() as u64 + self.skipped {
                // Truncated in place: what is there now was written since.
                let path = self.path.clone();
                self.open(&path, 0);
                self.read_to_end(&mut lines)?;
            }
        }
        Ok(lines)
    }

    fn read_to_end(&mut self, lines: &mut Vec<String>) -> io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            for &b in &buf[..n] {
                if b == b'\n' {
                    lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                    self.offset += self.partial.len() as u64 + self.skipped + 1;
                    self.partial.clear();
                    self.skipped = 0;
                } else if self.partial.len() < MAX_LINE {
                    self.partial.push(b);
                } else {
                    if self.skipped == 0 {
                        self.cut_lines += 1;
                    }
                    self.skipped += 1;
                }
            }
        }
    }
}

pub mod wake;

#[cfg(test)]
mod tests;
