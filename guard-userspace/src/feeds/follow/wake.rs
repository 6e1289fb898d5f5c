//! Waking a file follower when its file changes: inotify on the file's directory (so that a
//! rename, a new file and a truncation are seen as well as a write), with a timeout as the
//! fallback where inotify is unavailable or misses a change (some network file systems).

use std::{ffi::CString, os::unix::ffi::OsStrExt, path::Path, time::Duration};

/// An inotify watch on a directory; closed on drop.
pub struct DirWatch {
    fd: i32,
}

impl DirWatch {
    /// Watches the directory holding `file`; `None` when inotify cannot (the follower then
    /// polls on its timeout alone).
    pub fn new(file: &Path) -> Option<DirWatch> {
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty())?;
        let dir = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 has no preconditions; the descriptor is closed on drop.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        let watch = DirWatch { fd };
        let mask = libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_CLOSE_WRITE;
        // SAFETY: `dir` is a NUL-terminated path; `fd` is the inotify descriptor.
        if unsafe { libc::inotify_add_watch(fd, dir.as_ptr(), mask) } < 0 {
            return None;
        }
        Some(watch)
    }

    /// Waits until something changed in the directory, or `timeout`; forgets what it read.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd, valid for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready > 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: reads at most `buf.len()` bytes into `buf`; non-blocking.
            while unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        }
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        // SAFETY: closes the descriptor this owns, once.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_write_wakes_the_watch_at_once() {
        let dir = std::env::temp_dir().join(format!("mailguard-wake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("mail.log");
        std::fs::write(&file, "").unwrap();
        let watch = DirWatch::new(&file).expect("inotify");
        let writer = {
            let file = file.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                std::fs::write(&file, "a line\n").unwrap();
            })
        };
        let start = Instant::now();
        watch.wait(Duration::from_secs(10));
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "woken by the write"
        );
        writer.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
