//! The lists' state beyond the configuration, kept in `<state dir>/lists.json`: the entries
//! last fetched from each list's files and SPF records (the last good version), the entries
//! added at run time, and how refreshing went. `fetch` reads a list's files and records.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::lists::{ListName, ListSources, Lists, parse_list_file};

/// Entries fetched from a list's files and SPF records: the last good version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    pub entries: std::collections::BTreeSet<IpNet>,
    /// Unix seconds of the fetch.
    pub fetched_at: u64,
    /// The sources they came from (`ListSources::external`).
    #[serde(default)]
    pub from: Vec<String>,
}

/// How refreshing a list went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshStatus {
    /// Unix seconds of the last refresh that succeeded.
    pub last_success: Option<u64>,
    pub failures: u64,
    /// The last refresh's error, cleared by a success.
    pub last_error: Option<String>,
}

/// The lists beyond the configuration: fetched entries, run-time additions, refresh status.
/// Kept in `<state dir>/lists.json`, so that a restart starts from the last good version.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListState {
    pub fetched: BTreeMap<ListName, Fetched>,
    /// Run-time additions: entry -> when it ends (Unix seconds, 0 for never).
    pub runtime: BTreeMap<ListName, BTreeMap<IpNet, u64>>,
    pub status: BTreeMap<ListName, RefreshStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a mailguard list state: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// A saved JSON state at `path`, or the empty one when there is none yet.
pub(crate) fn load_json<T: serde::de::DeserializeOwned + Default>(
    path: PathBuf,
) -> Result<T, ListError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|source| ListError::Corrupt { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(source) => Err(ListError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

/// Writes `bytes` to `path` in `state_dir` through a temporary file and a rename: a crash
/// leaves the old or the new version, never half of one.
pub(crate) fn save_atomically(
    state_dir: &Path,
    path: &Path,
    bytes: &[u8],
) -> Result<(), ListError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| ListError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(state_dir).map_err(io("create", state_dir))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("rename", path))
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ListState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lists.json")
    }

    /// The saved state, or an empty one when there is none yet.
    pub fn load(state_dir: &Path) -> Result<ListState, ListError> {
        load_json(ListState::path(state_dir))
    }

    /// Saves atomically (a crash leaves the old or the new version, never half of one).
    pub fn save(&self, state_dir: &Path) -> Result<(), ListError> {
        let text = serde_json::to_vec_pretty(self).expect("list state serializes");
        save_atomically(state_dir, &ListState::path(state_dir), &text)
    }

    /// Every entry beyond the configuration's own, for the maps (expired ones left out).
    /// Fetched entries count while their list still has files or SPF records.
    pub fn extra(&self, config: &Lists, now: u64) -> crate::kernel::policy::Extra {
        let mut extra = crate::kernel::policy::Extra::new();
        for (list, fetched) in self
            .fetched
            .iter()
            .filter(|(l, _)| config.sources(**l).is_external())
        {
            let target = extra.entry(*list).or_default();
            for net in &fetched.entries {
                target.insert(*net, 0);
            }
        }
        for (list, entries) in &self.runtime {
            let target = extra.entry(*list).or_default();
            for (net, expires) in entries.iter().filter(|(_, e)| **e == 0 || **e > now) {
                // A run-time block with an end overrides a permanent entry from elsewhere only
                // when nothing else lists it.
                target
                    .entry(*net)
                    .and_modify(|e| *e = if *e == 0 { 0 } else { (*e).max(*expires) })
                    .or_insert(*expires);
            }
        }
        extra
    }

    /// Forgets run-time entries whose time is up; returns whether any went.
    pub fn expire(&mut self, now: u64) -> bool {
        let mut changed = false;
        for entries in self.runtime.values_mut() {
            let before = entries.len();
            entries.retain(|_, e| *e == 0 || *e > now);
            changed |= entries.len() != before;
        }
        changed
    }

    /// The outcome of fetching `list` from sources `from`: replaces the last good version,
    /// unless it would shrink it by more than `max_shrink` (and `force` is not set: a change
    /// of sources counts as forced) or overflow the map.
    pub fn accept(
        &mut self,
        list: ListName,
        from: Vec<String>,
        result: Result<std::collections::BTreeSet<IpNet>, String>,
        max_shrink: f64,
        force: bool,
    ) -> Result<usize, String> {
        let now = now_unix();
        let previous = self.fetched.get(&list).filter(|f| f.from == from);
        let checked = result.and_then(|entries| {
            let v4 = entries.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
            let v6 = entries.len() - v4;
            let max = guard_common::LIST_MAX_ENTRIES as usize;
            if v4 > max || v6 > max {
                return Err(format!(
                    "{v4} IPv4 and {v6} IPv6 entries do not fit: a list holds at most {max} per family"
                ));
            }
            let before = previous.map_or(0, |f| f.entries.len());
            let removed = previous.map_or(0, |f| f.entries.difference(&entries).count());
            if !force && before > 0 && removed as f64 > max_shrink * before as f64 {
                return Err(format!(
                    "refused: the update would remove {removed} of {before} entries (more than {:.0}%); \
                     `mailguard lists refresh --force` accepts it",
                    max_shrink * 100.0
                ));
            }
            Ok(entries)
        });
        let status = self.status.entry(list).or_default();
        match checked {
            Ok(entries) => {
                let n = entries.len();
                self.fetched.insert(
                    list,
                    Fetched {
                        entries,
                        fetched_at: now,
                        from,
                    },
                );
                status.last_success = Some(now);
                status.last_error = None;
                Ok(n)
            }
            Err(e) => {
                status.failures += 1;
                status.last_error = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// One entry of a list and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListEntry {
    pub cidr: IpNet,
    /// `config`, `fetched` (files and SPF records), `runtime` (`mailguard ... add`).
    pub origins: Vec<String>,
    /// When a run-time entry ends (Unix seconds), if it does.
    pub expires: Option<u64>,
    /// For a ban (origin `ban:RULE`): what it counted, the offence, since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<crate::feeds::ban_state::Ban>,
}

/// A list at a glance, for `status`, `lists show` and the metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListSummary {
    pub list: ListName,
    /// Entries in the maps, by family.
    pub ipv4: usize,
    pub ipv6: usize,
    /// Run-time entries among them.
    pub runtime: usize,
    /// Files and SPF domains refreshed into the list.
    pub sources: Vec<String>,
    /// Unix seconds of the last refresh that succeeded.
    pub last_refresh: Option<u64>,
    pub refresh_failures: u64,
    pub last_error: Option<String>,
}

impl ListState {
    /// Adds `nets` to `list` at run time (for `seconds`, else for ever), or removes them. All
    /// or nothing: a removal of an entry that is not a run-time one changes nothing and says
    /// where the entry comes from. A timed entry ends on the first whole second at least
    /// `seconds` from now.
    pub fn edit(
        &mut self,
        config: &Lists,
        list: ListName,
        add: bool,
        nets: &[IpNet],
        seconds: Option<u64>,
    ) -> Result<String, String> {
        let until = match seconds {
            None => 0,
            Some(s) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.checked_add(std::time::Duration::from_secs(s.max(1)))
                    .map(|end| end.as_secs_f64().ceil() as u64)
                    .ok_or_else(|| format!("{s} seconds from now is past the end of time"))?
            }
        };
        let entries = self.runtime.entry(list).or_default();
        if add {
            let total = entries.len() + nets.len();
            if total > guard_common::LIST_MAX_ENTRIES as usize / 2 {
                return Err(format!(
                    "{total} run-time entries are too many for {list}; use a list file"
                ));
            }
            for net in nets {
                entries.insert(*net, until);
            }
            return Ok(match seconds {
                None => format!("added {} to {list}", join(nets)),
                Some(s) => format!(
                    "added {} to {list} for {}",
                    join(nets),
                    crate::config::durations::human_duration(s.max(1))
                ),
            });
        }
        for net in nets {
            if !entries.contains_key(net) {
                let from_config = config.sources(list).cidrs.contains(net);
                let fetched = self
                    .fetched
                    .get(&list)
                    .is_some_and(|f| f.entries.contains(net));
                return Err(match (from_config, fetched) {
                    (true, _) => format!(
                        "{net} is in the configuration's [lists.{list}] cidrs: remove it there and reload"
                    ),
                    (_, true) => {
                        format!("{net} comes from {list}'s files or SPF records: change them there")
                    }
                    _ => format!("{net} is not on the {list} list"),
                });
            }
        }
        for net in nets {
            entries.remove(net);
        }
        Ok(format!("removed {} from {list}", join(nets)))
    }

    /// Every entry of `list`, with its origins (expired run-time entries left out).
    pub fn entries(&self, config: &Lists, list: ListName, now: u64) -> Vec<ListEntry> {
        let mut out: BTreeMap<IpNet, ListEntry> = BTreeMap::new();
        let mut note = |net: &IpNet, origin: &str, expires: Option<u64>| {
            let e = out.entry(*net).or_insert_with(|| ListEntry {
                cidr: *net,
                origins: vec![],
                expires: None,
                ban: None,
            });
            e.origins.push(origin.into());
            e.expires = e.expires.or(expires);
        };
        for net in &config.sources(list).cidrs {
            note(net, "config", None);
        }
        if config.sources(list).is_external() {
            for net in self.fetched.get(&list).into_iter().flat_map(|f| &f.entries) {
                note(net, "fetched", None);
            }
        }
        for (net, until) in self
            .runtime
            .get(&list)
            .into_iter()
            .flatten()
            .filter(|(_, u)| **u == 0 || **u > now)
        {
            note(net, "runtime", (*until != 0).then_some(*until));
        }
        out.into_values().collect()
    }
}

fn join(nets: &[IpNet]) -> String {
    nets.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fetches a list's files (and, with `spf`, its SPF records): all of its external entries, or
/// the first problem (naming the file and line, or the record).
pub fn fetch(
    sources: &ListSources,
    spf: &dyn Fn(&str) -> Result<std::collections::BTreeSet<IpNet>, String>,
) -> Result<std::collections::BTreeSet<IpNet>, String> {
    let mut out = std::collections::BTreeSet::new();
    for path in &sources.files {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let text =
            crate::config::utf8_text(bytes).map_err(|m| format!("{}:{m}", path.display()))?;
        out.extend(parse_list_file(path, &text)?);
    }
    for domain in &sources.spf {
        out.extend(spf(domain).map_err(|e| format!("SPF of {domain}: {e}"))?);
    }
    Ok(out)
}

#[cfg(test)]
mod state_tests {
    use super::*;

    fn nets(list: &[&str]) -> std::collections::BTreeSet<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn shrinking_updates_are_refused_unless_forced() {
        let mut s = ListState::default();
        let big = nets(&[
            "198.18.1.0/24",
            "198.18.2.0/24",
            "198.18.3.0/24",
            "198.18.4.0/24",
        ]);
        assert_eq!(
            s.accept(ListName::MxAllow, vec![], Ok(big.clone()), 0.5, false),
            Ok(4)
        );
        let small = nets(&["198.18.1.0/24"]);
        let e = s
            .accept(ListName::MxAllow, vec![], Ok(small.clone()), 0.5, false)
            .unwrap_err();
        assert!(e.contains("would remove 3 of 4 entries"), "{e}");
        assert_eq!(
            s.fetched[&ListName::MxAllow].entries,
            big,
            "the last good version stays"
        );
        assert_eq!(s.status[&ListName::MxAllow].failures, 1);
        assert_eq!(
            s.accept(ListName::MxAllow, vec![], Ok(small.clone()), 0.5, true),
            Ok(1)
        );
        assert_eq!(s.fetched[&ListName::MxAllow].entries, small);
        assert_eq!(s.status[&ListName::MxAllow].last_error, None);
        // New sources make a new list: no shrink check against the old sources' entries.
        assert_eq!(
            s.accept(
                ListName::MxAllow,
                vec!["spf:other.test".into()],
                Ok(nets(&[])),
                0.5,
                false
            ),
            Ok(0)
        );
    }

    #[test]
    fn lists_larger_than_the_map_are_refused() {
        let mut s = ListState::default();
        let huge: std::collections::BTreeSet<IpNet> = (0..=guard_common::LIST_MAX_ENTRIES)
            .map(|i| {
                let mut a = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                a[4..8].copy_from_slice(&i.to_be_bytes());
                IpNet::new(std::net::Ipv6Addr::from(a).into(), 64).unwrap()
            })
            .collect();
        let e = s
            .accept(ListName::Block, vec![], Ok(huge), 0.5, true)
            .unwrap_err();
        assert_eq!(
            e,
            "0 IPv4 and 1048577 IPv6 entries do not fit: a list holds at most 1048576 per family"
        );
        assert!(!s.fetched.contains_key(&ListName::Block));
    }

    #[test]
    fn failures_keep_the_last_good_version() {
        let mut s = ListState::default();
        let good = nets(&["198.18.1.0/24"]);
        s.accept(ListName::Trusted, vec![], Ok(good.clone()), 0.5, false)
            .unwrap();
        assert!(
            s.accept(
                ListName::Trusted,
                vec![],
                Err("DNS timeout".into()),
                0.5,
                false
            )
            .is_err()
        );
        assert_eq!(s.fetched[&ListName::Trusted].entries, good);
        assert_eq!(
            s.status[&ListName::Trusted].last_error.as_deref(),
            Some("DNS timeout")
        );
        assert!(s.status[&ListName::Trusted].last_success.is_some());
    }

    #[test]
    fn runtime_entries_expire() {
        let mut s = ListState::default();
        s.runtime
            .entry(ListName::Block)
            .or_default()
            .insert("198.19.0.1/32".parse().unwrap(), 100);
        s.runtime
            .entry(ListName::Block)
            .or_default()
            .insert("198.19.0.2/32".parse().unwrap(), 0);
        let config = Lists::default();
        assert_eq!(s.extra(&config, 50)[&ListName::Block].len(), 2);
        assert_eq!(
            s.extra(&config, 150)[&ListName::Block].len(),
            1,
            "expired entries are left out"
        );
        assert!(s.expire(150));
        assert!(!s.expire(150));
        assert_eq!(s.runtime[&ListName::Block].len(), 1);
    }

    #[test]
    fn runtime_edits_are_all_or_nothing_and_name_origins() {
        let mut s = ListState::default();
        let mut config = Lists::default();
        config
            .lists
            .get_mut(&ListName::Block)
            .unwrap()
            .cidrs
            .push("198.19.1.0/24".parse().unwrap());
        let a: IpNet = "198.19.0.1/32".parse().unwrap();
        let b: IpNet = "2001:db8:bad::/48".parse().unwrap();
        assert_eq!(
            s.edit(&config, ListName::Block, true, &[a, b], None)
                .unwrap(),
            "added 198.19.0.1/32, 2001:db8:bad::/48 to block"
        );
        let e = s
            .edit(
                &config,
                ListName::Block,
                false,
                &[a, "198.19.1.0/24".parse().unwrap()],
                None,
            )
            .unwrap_err();
        assert!(
            e.contains("in the configuration's [lists.block] cidrs"),
            "{e}"
        );
        assert_eq!(s.runtime[&ListName::Block].len(), 2, "nothing removed");
        let e = s
            .edit(
                &config,
                ListName::Block,
                false,
                &["198.19.9.9/32".parse().unwrap()],
                None,
            )
            .unwrap_err();
        assert_eq!(e, "198.19.9.9/32 is not on the block list");
        s.edit(&config, ListName::Block, false, &[a], None).unwrap();
        let now = now_unix();
        let m = s
            .edit(
                &config,
                ListName::Block,
                true,
                &["198.19.1.0/24".parse().unwrap()],
                Some(500),
            )
            .unwrap();
        assert_eq!(m, "added 198.19.1.0/24 to block for 8m20s");
        let entries = s.entries(&config, ListName::Block, now);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].cidr.to_string(), "198.19.1.0/24");
        assert_eq!(entries[0].origins, ["config", "runtime"]);
        let until = entries[0].expires.expect("timed");
        assert!((now + 500..=now + 502).contains(&until), "{until} vs {now}");
        assert_eq!(
            s.entries(&config, ListName::Block, now + 600)[0].expires,
            None,
            "expired: config only"
        );
    }

    #[test]
    fn state_round_trips_on_disk() {
        let dir = std::env::temp_dir().join(format!("mailguard-lists-{}", std::process::id()));
        let mut s = ListState::default();
        s.accept(
            ListName::MxAllow,
            vec![],
            Ok(nets(&["2001:db8:10::/48"])),
            0.5,
            false,
        )
        .unwrap();
        s.runtime
            .entry(ListName::Block)
            .or_default()
            .insert("198.19.0.1/32".parse().unwrap(), 0);
        s.save(&dir).unwrap();
        assert_eq!(ListState::load(&dir).unwrap(), s);
        std::fs::write(ListState::path(&dir), "{not json").unwrap();
        assert!(matches!(
            ListState::load(&dir),
            Err(ListError::Corrupt { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            ListState::load(&dir).unwrap(),
            ListState::default(),
            "no state yet: empty"
        );
    }

    #[test]
    fn fetch_reads_files_and_names_problems() {
        let dir = std::env::temp_dir().join(format!("mailguard-fetch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.txt");
        std::fs::write(&good, "198.18.1.0/24\n# comment\n2001:db8::/32\n").unwrap();
        let no_spf = |_: &str| -> Result<std::collections::BTreeSet<IpNet>, String> {
            Ok(Default::default())
        };
        let src = ListSources {
            files: vec![good.clone()],
            ..ListSources::default()
        };
        assert_eq!(fetch(&src, &no_spf).unwrap().len(), 2);
        let missing = ListSources {
            files: vec![dir.join("missing.txt")],
            ..ListSources::default()
        };
        assert!(
            fetch(&missing, &no_spf)
                .unwrap_err()
                .contains("missing.txt")
        );
        let spf = ListSources {
            spf: vec!["provider.test".into()],
            ..ListSources::default()
        };
        let failing = |d: &str| -> Result<std::collections::BTreeSet<IpNet>, String> {
            Err(format!("{d}: NXDOMAIN"))
        };
        assert_eq!(
            fetch(&spf, &failing).unwrap_err(),
            "SPF of provider.test: provider.test: NXDOMAIN"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
