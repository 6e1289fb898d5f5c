//! What keeps the host protected when the daemon is gone: the XDP and sock_ops links and every
//! map, pinned under the pin directory (default `/sys/fs/bpf/mailguard`):
//!
//! ```text
//! <pin dir>/xdp_link        the XDP attachment (bpf_link)
//! <pin dir>/sockops_link    the sock_ops attachment on the cgroup v2 root (bpf_link)
//! <pin dir>/maps/<MAP>      every map, reused by the next start
//! ```
//!
//! A starting daemon reuses pinned maps whose type, key and value sizes, capacity and flags
//! match what the program expects (checked against the embedded object itself), recreates the
//! others with a message, and replaces the program inside the pinned links atomically
//! (`BPF_LINK_UPDATE`): there is no moment without protection.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use guard_common::maps as names;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot parse the embedded eBPF object: {0}")]
    Object(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not on bpffs, where mailguard pins its programs and maps: mount it with \
         `mount -t bpf bpf /sys/fs/bpf` (inside `ip netns exec`, which remounts /sys, use \
         `nsenter --net=/run/netns/NAME` instead)",
        path.display()
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "another mailguard holds the pins in {} (two daemons must not share them): stop it, or \
         give this one another --pin-dir",
        path.display()
    )]
    Locked { path: PathBuf },
    #[error("pinned map {}: {source}", path.display())]
    Map {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
}

/// The pin directory and what lives in it.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub fn new(dir: &Path) -> Pins {
        Pins {
            dir: dir.to_path_buf(),
        }
    }

    pub fn maps_dir(&self) -> PathBuf {
        self.dir.join("maps")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps_dir().join(name)
    }

    pub fn xdp_link(&self) -> PathBuf {
        self.dir.join("xdp_link")
    }

    pub fn sockops_link(&self) -> PathBuf {
        self.dir.join("sockops_link")
    }

    /// Takes the lock that lives with the pins: the pin directory itself, locked with flock, so
    /// that two daemons never share pins whatever their run directories. Creates the directory
    /// (which needs bpffs mounted above it).
    pub fn lock(&self) -> Result<PinLock, PinError> {
        use std::os::fd::AsRawFd;
        // The nearest directory that exists must be on bpffs (the rest is created on it).
        if let Some(existing) = self.dir.ancestors().find(|a| a.exists())
            && !on_bpffs(existing)
        {
            return Err(PinError::NotBpffs {
                path: existing.to_path_buf(),
            });
        }
        fs::create_dir_all(&self.dir).map_err(|source| PinError::Io {
            action: "create",
            path: self.dir.clone(),
            source,
        })?;
        let dir = fs::File::open(&self.dir).map_err(|source| PinError::Io {
            action: "open",
            path: self.dir.clone(),
            source,
        })?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PinError::Locked {
                path: self.dir.clone(),
            });
        }
        Ok(PinLock { _dir: dir })
    }

    /// Whether a previous run left an XDP attachment.
    pub fn attached(&self) -> bool {
        self.xdp_link().exists()
    }

    /// Where a map that replaces the pinned one is pinned until the start that made it has
    /// succeeded (`commit_new_maps`): the map in force keeps its pin until then. (bpffs allows
    /// no dot in a name.)
    pub fn map_new(&self, name: &str) -> PathBuf {
        self.maps_dir().join(format!("{name}_new"))
    }

    /// The start succeeded: each new map takes the place of the one it replaces.
    pub fn commit_new_maps(&self) -> Result<(), PinError> {
        for (new, name) in self.new_maps() {
            fs::rename(&new, self.map(&name)).map_err(|source| PinError::Io {
                action: "rename",
                path: new.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The start failed (or a crashed one left them): the new maps go, the pinned ones stay.
    pub fn discard_new_maps(&self) {
        for (new, _) in self.new_maps() {
            let _ = fs::remove_file(new);
        }
    }

    fn new_maps(&self) -> Vec<(PathBuf, String)> {
        fs::read_dir(self.maps_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        let name = e.file_name().into_string().ok()?;
                        let base = name.strip_suffix("_new")?.to_string();
                        Some((e.path(), base))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks every pinned map against the program's own definition of it (with the
    /// configured capacities). Returns each map that does not match, with why: the start makes
    /// a new one beside it (`map_new`), and it replaces the pinned one only once the start has
    /// succeeded, so that nothing is unpinned before its replacement works.
    pub fn check_maps(
        &self,
        object: &[u8],
        config: &Config,
    ) -> Result<Vec<(String, String)>, PinError> {
        let obj = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
        let mut recreated = Vec::new();
        for (name, def) in &obj.maps {
            let path = self.map(name);
            if !path.exists() {
                continue;
            }
            let capacity = configured_capacity(name, config).unwrap_or(def.max_entries());
            let info = MapInfo::from_pin(&path).map_err(|source| PinError::Map {
                path: path.clone(),
                source,
            })?;
            let pinned_type = info.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
            let mut differences = Vec::new();
            if pinned_type != def.map_type() {
                differences.push(format!("type {pinned_type}, expected {}", def.map_type()));
            }
            if info.key_size() != def.key_size() {
                differences.push(format!(
                    "key size {}, expected {}",
                    info.key_size(),
                    def.key_size()
                ));
            }
            if info.value_size() != def.value_size() {
                differences.push(format!(
                    "value size {}, expected {}",
                    info.value_size(),
                    def.value_size()
                ));
            }
            if info.max_entries() != capacity {
                differences.push(format!(
                    "capacity {}, configured {capacity}",
                    info.max_entries()
                ));
            }
            if info.map_flags() != def.map_flags() {
                differences.push(format!(
                    "flags {:#x}, expected {:#x}",
                    info.map_flags(),
                    def.map_flags()
                ));
            }
            if !differences.is_empty() {
                recreated.push((
                    name.clone(),
                    format!(
                        "map {name}: the pinned map has {}: a new, empty one replaces it",
                        differences.join(", ")
                    ),
                ));
            }
        }
        Ok(recreated)
    }

    /// Removes the attachments (which detaches them once nothing else holds them) and every
    /// map. Returns whether anything was there.
    pub fn remove_all(&self) -> Result<bool, PinError> {
        let mut found = false;
        for link in [self.xdp_link(), self.sockops_link()] {
            found |= remove(&link)?;
        }
        if let Ok(entries) = fs::read_dir(self.maps_dir()) {
            for e in entries.flatten() {
                found |= remove(&e.path())?;
            }
        }
        for dir in [self.maps_dir(), self.dir.clone()] {
            match fs::remove_dir(&dir) {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                Err(source) => {
                    return Err(PinError::Io {
                        action: "remove",
                        path: dir,
                        source,
                    });
                }
            }
        }
        Ok(found)
    }
}

/// The pin directory's lock, held while the daemon runs.
pub struct PinLock {
    _dir: fs::File,
}

/// Whether `path` is on a bpffs mount (BPF_FS_MAGIC).
pub fn on_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the struct we pass; `c` is a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

fn remove(path: &Path) -> Result<bool, PinError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(PinError::Io {
            action: "unpin",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Capacities set by the configuration rather than the object.
pub fn configured_capacity(map: &str, config: &Config) -> Option<u32> {
    let budgets = &config.budgets;
    match map {
        names::SOURCES => Some(guard_common::source_buckets(budgets.tracked_sources)),
        names::CONNECTIONS | names::SOCKETS => Some(budgets.tracked_connections),
        names::V6_TABLE => Some(guard_common::v6_buckets_for(
            config.lists.ipv6_index_capacity,
        )),
        _ => None,
    }
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf(cmd: libc::c_long, attr: &[u64]) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-padded bpf_attr prefix of the size passed; the kernel reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pinned BPF object (a link).
pub fn open_pinned(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64), bpf_fd (u32), file_flags (u32).
    let attr = [c.as_ptr() as u64, 0, 0];
    let fd = bpf(BPF_OBJ_GET, &attr)?;
    // SAFETY: the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The interface index of the pinned XDP link at `path`: 0 once its interface went away (the
/// kernel then calls the link severed; its program no longer runs anywhere).
pub fn xdp_link_ifindex(path: &Path) -> io::Result<u32> {
    let link = open_pinned(path)?;
    // struct bpf_link_info: type, id, prog_id (u32 each), then (8-byte aligned) the union whose
    // `xdp` member is `ifindex` (u32).
    let mut info = [0u64; 8];
    let attr = [
        (link.as_raw_fd() as u32 as u64) | ((std::mem::size_of_val(&info) as u64) << 32),
        info.as_mut_ptr() as u64,
    ];
    bpf(BPF_OBJ_GET_INFO_BY_FD, &attr)?;
    Ok(info[2] as u32)
}

/// Replaces the program of a link, atomically (`BPF_LINK_UPDATE`).
pub fn update_link(link: &OwnedFd, program: &impl AsRawFd) -> io::Result<()> {
    // union bpf_attr for BPF_LINK_UPDATE: link_fd, new_prog_fd, flags, old_prog_fd (u32 each).
    let lo = (link.as_raw_fd() as u32 as u64) | ((program.as_raw_fd() as u32 as u64) << 32);
    bpf(BPF_LINK_UPDATE, &[lo, 0]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacities_from_the_configuration() {
        use crate::config::budgets::Budgets;
        let mut b = Config {
            budgets: Budgets {
                tracked_sources: 123,
                tracked_connections: 456,
                ..Budgets::default()
            },
            ..Config::default()
        };
        b.lists.ipv6_index_capacity = 1000;
        assert_eq!(
            configured_capacity(names::SOURCES, &b),
            Some(62),
            "two sources per bucket"
        );
        assert_eq!(configured_capacity(names::SOCKETS, &b), Some(456));
        assert_eq!(configured_capacity(names::COUNTERS, &b), None);
        // 1250 slots at most 80% full: 417 buckets of three, rounded up to a power of two.
        assert_eq!(configured_capacity(names::V6_TABLE, &b), Some(512));
    }

    #[test]
    fn the_object_defines_every_map() {
        let obj = aya_obj::Object::parse(crate::kernel::guard::EBPF_OBJECT).unwrap();
        for name in names::ALL {
            assert!(obj.maps.contains_key(*name), "object lacks map {name}");
        }
        assert_eq!(obj.maps[names::SOURCES].key_size(), 4, "an array");
        assert_eq!(
            obj.maps[names::SOURCES].value_size() as usize,
            std::mem::size_of::<guard_common::SourceBucket>()
        );
    }

    #[test]
    fn the_embedded_object_holds_mailguard_s_programs_only() {
        let obj = aya_obj::Object::parse(crate::kernel::guard::EBPF_OBJECT).unwrap();
        let mut programs: Vec<&str> = obj.programs.keys().map(String::as_str).collect();
        programs.sort_unstable();
        assert_eq!(programs, [names::SOCKOPS_PROGRAM, names::XDP_PROGRAM]);
        let mut maps: Vec<&str> = obj.maps.keys().map(String::as_str).collect();
        maps.retain(|m| !m.starts_with('.'));
        assert!(
            maps.iter().all(|m| m.starts_with("MG_")),
            "maps that are not mailguard's: {maps:?}"
        );
    }
}
