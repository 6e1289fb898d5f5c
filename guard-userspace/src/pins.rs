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

    /// Whether a previous run left an XDP attachment.
    pub fn attached(&self) -> bool {
        self.xdp_link().exists()
    }

    /// Checks every pinned map against the program's own definition of it (with the
    /// configured capacities). A map that does not match is unpinned, so that loading creates
    /// a new one; each such map is reported.
    pub fn check_maps(&self, object: &[u8], config: &Config) -> Result<Vec<String>, PinError> {
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
                fs::remove_file(&path).map_err(|source| PinError::Io {
                    action: "unpin",
                    path: path.clone(),
                    source,
                })?;
                recreated.push(format!(
                    "map {name}: the pinned map has {}: recreated empty",
                    differences.join(", ")
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
        use crate::budgets::Budgets;
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
        let obj = aya_obj::Object::parse(crate::guard::EBPF_OBJECT).unwrap();
        for name in names::ALL {
            assert!(obj.maps.contains_key(*name), "object lacks map {name}");
        }
        assert_eq!(obj.maps[names::SOURCES].key_size(), 4, "an array");
        assert_eq!(
            obj.maps[names::SOURCES].value_size() as usize,
            std::mem::size_of::<guard_common::SourceBucket>()
        );
    }
}
