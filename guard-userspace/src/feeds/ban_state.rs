//! What the bans keep across restarts, in `<state dir>/bans.json`, saved whole and atomically:
//! the bans in force (with their rule, origin and offence), where each log source was read to
//! (a file's checkpoint, the journal's cursor), and what the rules had counted up to there.
//! Saved together, these agree: a restart goes on from the place the counts stop, so that no
//! log line is lost and none is counted twice.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::feeds::{
    bans::Memory,
    follow::Checkpoint,
    saved::{ListError, load_json, save_atomically},
};

/// One ban in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// The rule that fired (`auth`, `auth_net`, `harvest`, ...).
    pub rule: String,
    /// What the rule counts (`auth`, `harvest`, `relay`, `postscreen`).
    pub origin: String,
    /// Unix seconds: when it was decided, and when it ends.
    pub since: u64,
    pub until: u64,
    /// The offender's offence under this rule: 1 for the first, 2 for the second, ...
    pub strike: u32,
}

/// The bans' saved state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanState {
    pub bans: BTreeMap<IpNet, Ban>,
    /// Each followed file's place.
    pub files: BTreeMap<PathBuf, Checkpoint>,
    /// The journal's cursor after the last record counted.
    pub journal_cursor: Option<String>,
    /// The rules' counts and offenders at those places.
    pub memory: Memory,
}

impl BanState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("bans.json")
    }

    /// The saved state, or an empty one when there is none yet.
    pub fn load(state_dir: &Path) -> Result<BanState, ListError> {
        load_json(BanState::path(state_dir))
    }

    /// Saves atomically (a crash leaves the old or the new version, never half of one).
    pub fn save(&self, state_dir: &Path) -> Result<(), ListError> {
        let bytes = serde_json::to_vec(self).expect("ban state serializes");
        save_atomically(state_dir, &BanState::path(state_dir), &bytes)
    }

    /// Forgets bans whose time is up; returns whether any went.
    pub fn expire(&mut self, now: u64) -> bool {
        let before = self.bans.len();
        self.bans.retain(|_, b| b.until > now);
        self.bans.len() != before
    }

    /// Bans in force at `now` by rule.
    pub fn by_rule(&self, now: u64) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for b in self.bans.values().filter(|b| b.until > now) {
            *out.entry(b.rule.clone()).or_default() += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_and_bans_expire() {
        let dir = std::env::temp_dir().join(format!("mailguard-banstate-{}", std::process::id()));
        let mut s = BanState::default();
        s.bans.insert(
            "198.18.100.7/32".parse().unwrap(),
            Ban {
                rule: "auth".into(),
                origin: "auth".into(),
                since: 100,
                until: 700,
                strike: 1,
            },
        );
        s.files.insert(
            PathBuf::from("/var/log/mail.log"),
            Checkpoint {
                inode: 7,
                offset: 4096,
            },
        );
        s.journal_cursor = Some("s=1;i=2".into());
        s.save(&dir).unwrap();
        assert_eq!(BanState::load(&dir).unwrap(), s);
        assert_eq!(s.by_rule(500)["auth"], 1);
        assert!(!s.expire(699));
        assert!(s.expire(700));
        assert!(s.bans.is_empty());
        std::fs::write(BanState::path(&dir), "{").unwrap();
        assert!(matches!(
            BanState::load(&dir),
            Err(ListError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
