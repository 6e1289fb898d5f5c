//! Rotation, truncation, partial lines and restarts on real files.

use std::{fs, io::Write};

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("mg-follow-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn a_first_start_begins_at_the_end_and_partial_lines_wait() {
    let d = Dir::new("first");
    let log = d.0.join("mail.log");
    append(&log, "old 1\nold 2\n");
    let mut f = Follower::new(&log, None);
    assert!(f.poll().unwrap().is_empty(), "history is not read");
    append(&log, "new 1\nnew ");
    assert_eq!(f.poll().unwrap(), ["new 1"]);
    append(&log, "2\n");
    assert_eq!(f.poll().unwrap(), ["new 2"]);
}

#[test]
fn rotation_by_rename_loses_nothing() {
    let d = Dir::new("rotate");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut f = Follower::new(&log, None);
    append(&log, "a\n");
    assert_eq!(f.poll().unwrap(), ["a"]);
    // logrotate renames; the writer still has the old file open and writes once more.
    fs::rename(&log, d.0.join("mail.log.1")).unwrap();
    append(&d.0.join("mail.log.1"), "b (late, to the old file)\n");
    append(&log, "c\n");
    assert_eq!(f.poll().unwrap(), ["b (late, to the old file)", "c"]);
    append(&log, "d\n");
    assert_eq!(f.poll().unwrap(), ["d"]);
}

#[test]
fn truncation_reads_again_from_the_start() {
    let d = Dir::new("truncate");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut f = Follower::new(&log, None);
    append(&log, "one\ntwo\n");
    assert_eq!(f.poll().unwrap(), ["one", "two"]);
    // copytruncate: the content is copied away and the file emptied in place.
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    append(&log, "three\n");
    assert_eq!(f.poll().unwrap(), ["three"]);
}

#[test]
fn a_restart_goes_on_from_its_checkpoint() {
    let d = Dir::new("restart");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut f = Follower::new(&log, None);
    append(&log, "1\n2\n3");
    assert_eq!(f.poll().unwrap(), ["1", "2"]);
    let saved = f.checkpoint();
    drop(f);
    // Written while the daemon was down: the rest of line 3, and more.
    append(&log, "\n4\n");
    let mut f = Follower::new(&log, Some(saved));
    assert_eq!(
        f.poll().unwrap(),
        ["3", "4"],
        "nothing lost, nothing repeated"
    );
}

#[test]
fn a_restart_after_a_rotation_reads_the_rotated_file_first() {
    let d = Dir::new("restart-rotated");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut f = Follower::new(&log, None);
    append(&log, "1\n");
    assert_eq!(f.poll().unwrap(), ["1"]);
    let saved = f.checkpoint();
    drop(f);
    append(&log, "2\n");
    fs::rename(&log, d.0.join("mail.log.1")).unwrap();
    append(&log, "3\n");
    let mut f = Follower::new(&log, Some(saved));
    assert_eq!(f.poll().unwrap(), ["2", "3"]);
}

#[test]
fn a_file_that_appears_later_is_read_from_its_start() {
    let d = Dir::new("later");
    let log = d.0.join("mail.log");
    let mut f = Follower::new(&log, None);
    assert!(f.poll().unwrap().is_empty());
    append(&log, "first\n");
    assert_eq!(f.poll().unwrap(), ["first"]);
}

#[test]
fn an_endless_line_is_cut_not_held() {
    let d = Dir::new("long");
    let log = d.0.join("mail.log");
    append(&log, "");
    let mut f = Follower::new(&log, None);
    append(&log, &"x".repeat(MAX_LINE * 3));
    append(&log, "\nnext\n");
    let lines = f.poll().unwrap();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LINE);
    assert_eq!(lines[1], "next");
    assert_eq!(f.cut_lines, 1);
    // The checkpoint counts the whole line, cut part included.
    assert_eq!(f.checkpoint().offset, (MAX_LINE * 3 + 1 + 5) as u64);
}
