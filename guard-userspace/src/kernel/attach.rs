//! Attaching the loaded programs: XDP on the interface (native or generic, through a pinned
//! link that a later start replaces atomically, or moves make-before-break), sock_ops on the
//! root cgroup, and what they need to know of the host.

use std::{fs::File, path::PathBuf};

use aya::{
    Ebpf,
    programs::{
        ProgramError, SockOps, Xdp, XdpMode,
        links::{CgroupAttachMode, FdLink, LinkError, PinnedLink},
        sock_ops::SockOpsLinkId,
        xdp::{XdpLink, XdpLinkId},
    },
};
use guard_common::maps as names;

use std::os::fd::{AsFd, AsRawFd};

use crate::kernel::guard::{Guard, GuardError};
use crate::{config::AttachMode, kernel::pins::Pins, kernel::policy::HostFacts};

/// What attaching did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// A new attachment, in this mode.
    New(AttachedMode),
    /// The program inside an existing (pinned) attachment was replaced atomically.
    Replaced,
}

/// The mode an attachment really got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl Guard {
    /// Attaches XDP to `iface` through a link pinned at `pins.xdp_link()`, which outlives this
    /// process. When that link already exists (an earlier run), the program inside it is
    /// replaced atomically instead, and the mode stays the one it was attached with.
    pub fn attach_xdp_pinned(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pins: &Pins,
    ) -> Result<Attachment, GuardError> {
        let path = pins.xdp_link();
        if path.exists() {
            let ifindex = interface_index(iface).map_err(|source| GuardError::Interface {
                iface: iface.to_string(),
                source,
            })?;
            let pinned_on = crate::kernel::pins::xdp_link_ifindex(&path).map_err(|source| {
                GuardError::PinDir {
                    path: path.clone(),
                    source,
                }
            })?;
            if pinned_on != ifindex {
                return self.move_xdp(iface, mode, pins, pinned_on);
            }
        }
        let program = xdp_program_mut(&mut self.ebpf)?;
        if path.exists() {
            let pinned = PinnedLink::from_pin(&path).map_err(|source| GuardError::Link {
                path: path.clone(),
                source,
            })?;
            let link =
                XdpLink::try_from(FdLink::from(pinned)).map_err(|source| GuardError::Link {
                    path: path.clone(),
                    source,
                })?;
            program
                .attach_to_link(link)
                .map_err(|source| GuardError::Replace {
                    path: path.clone(),
                    source,
                })?;
            return Ok(Attachment::Replaced);
        }
        let mode = self.attach_xdp_and_pin(iface, mode, &path)?;
        Ok(Attachment::New(mode))
    }

    /// Attaches XDP to `iface` and pins the link at `path`.
    fn attach_xdp_and_pin(
        &mut self,
        iface: &str,
        mode: AttachMode,
        path: &std::path::Path,
    ) -> Result<AttachedMode, GuardError> {
        let (mode, id) = self.attach_xdp(iface, mode)?;
        let program = xdp_program_mut(&mut self.ebpf)?;
        let link = program.take_link(id).map_err(|source| GuardError::Attach {
            iface: iface.to_string(),
            mode: mode.name(),
            source,
        })?;
        pin_link(link, path)?;
        Ok(mode)
    }

    /// Attaches XDP to `iface` where the pinned link is on another interface (`pinned_on`), or
    /// on none (0: its interface went away, the link is severed). Make before break: the new
    /// attachment is made and pinned beside the old one first; only then does the old pin go,
    /// which detaches the old interface. A failure at any step leaves the old one in force.
    fn move_xdp(
        &mut self,
        iface: &str,
        mode: AttachMode,
        pins: &Pins,
        pinned_on: u32,
    ) -> Result<Attachment, GuardError> {
        let path = pins.xdp_link();
        // bpffs refuses names with a dot.
        let fresh = path.with_file_name("xdp_link_new");
        let _ = std::fs::remove_file(&fresh);
        let mode = self.attach_xdp_and_pin(iface, mode, &fresh)?;
        // Renaming over the old pin drops it (detaching the old interface) as it installs the
        // new one: there is no moment without a pinned attachment.
        std::fs::rename(&fresh, &path).map_err(|source| {
            let _ = std::fs::remove_file(&fresh);
            GuardError::PinDir {
                path: path.clone(),
                source,
            }
        })?;
        if pinned_on == 0 {
            log::warn!(
                "the pinned XDP attachment had lost its interface (it went away); attached to \
                 {iface} anew"
            );
        } else {
            log::warn!(
                "protection moved to {iface} from the interface with index {pinned_on} (attached \
                 here first, then detached there)"
            );
        }
        Ok(Attachment::New(mode))
    }

    /// Attaches sock_ops to the cgroup v2 root through a link pinned at `pins.sockops_link()`;
    /// when it exists, the program inside it is replaced atomically.
    pub fn attach_sockops_pinned(&mut self, pins: &Pins) -> Result<Attachment, GuardError> {
        let path = pins.sockops_link();
        if path.exists() {
            let link =
                crate::kernel::pins::open_pinned(&path).map_err(|source| GuardError::PinDir {
                    path: path.clone(),
                    source,
                })?;
            let program = sockops_program_mut(&mut self.ebpf)?;
            let fd = program.fd().map_err(|source| GuardError::Load {
                program: names::SOCKOPS_PROGRAM,
                source,
            })?;
            crate::kernel::pins::update_link(&link, &fd.as_fd().as_raw_fd()).map_err(|source| {
                GuardError::PinDir {
                    path: path.clone(),
                    source,
                }
            })?;
            return Ok(Attachment::Replaced);
        }
        let (_, id) = self.attach_sockops_link()?;
        let program = sockops_program_mut(&mut self.ebpf)?;
        let link = program.take_link(id).map_err(|source| GuardError::Load {
            program: names::SOCKOPS_PROGRAM,
            source,
        })?;
        pin_link(link, &path)?;
        Ok(Attachment::New(AttachedMode::Native))
    }

    /// Attaches the sock_ops program (connection counting) to the cgroup v2 root with a BPF
    /// link, which runs alongside any other programs there. It stays attached until this
    /// `Guard` is dropped.
    pub fn attach_sockops(&mut self) -> Result<PathBuf, GuardError> {
        self.attach_sockops_link().map(|(root, _)| root)
    }

    fn attach_sockops_link(&mut self) -> Result<(PathBuf, SockOpsLinkId), GuardError> {
        let root = cgroup2_root()?;
        let dir = File::open(&root).map_err(|source| GuardError::Cgroup {
            path: root.clone(),
            source,
        })?;
        let id = sockops_program_mut(&mut self.ebpf)?
            // Cgroup links are always multi-attach; the kernel wants no flags with them.
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| GuardError::AttachSockOps {
                path: root.clone(),
                source,
            })?;
        Ok((root, id))
    }

    /// Attaches the XDP program to `iface`; `Auto` tries native mode first, then generic.
    /// The attachment lasts until this `Guard` is dropped.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<AttachedMode, GuardError> {
        self.attach_xdp(iface, mode).map(|(mode, _)| mode)
    }

    fn attach_xdp(
        &mut self,
        iface: &str,
        mode: AttachMode,
    ) -> Result<(AttachedMode, XdpLinkId), GuardError> {
        let program = xdp_program_mut(&mut self.ebpf)?;
        // An XDP program someone else attached (xdp-filter, a firewall) is in the way: named.
        // (mailguard's own attachment is never in the way: that one is replaced, not attached.)
        let in_the_way = |mode: AttachedMode| -> Option<GuardError> {
            let index = interface_index(iface).ok()?;
            let id = crate::kernel::link_watch::xdp_program_on(index).ok()??;
            Some(GuardError::Occupied {
                iface: iface.to_string(),
                mode: mode.name(),
                id,
                name: program_name(id),
            })
        };
        let try_mode = |program: &mut Xdp, mode: AttachedMode| {
            let flags = match mode {
                AttachedMode::Native => XdpMode::Driver,
                AttachedMode::Skb => XdpMode::Skb,
            };
            program
                .attach(iface, flags)
                .map(|id| (mode, id))
                .map_err(|source| {
                    in_the_way(mode).unwrap_or(GuardError::Attach {
                        iface: iface.to_string(),
                        mode: mode.name(),
                        source,
                    })
                })
        };
        match mode {
            AttachMode::Native => try_mode(program, AttachedMode::Native),
            AttachMode::Skb => try_mode(program, AttachedMode::Skb),
            AttachMode::Auto => match try_mode(program, AttachedMode::Native) {
                Ok(m) => Ok(m),
                // Generic mode cannot share the interface either.
                Err(e @ GuardError::Occupied { .. }) => Err(e),
                Err(GuardError::Attach {
                    source: ProgramError::UnknownInterface { name },
                    ..
                }) => Err(GuardError::Attach {
                    iface: iface.to_string(),
                    mode: "native",
                    source: ProgramError::UnknownInterface { name },
                }),
                Err(native) => {
                    log::warn!("{native}; falling back to generic (skb) mode");
                    try_mode(program, AttachedMode::Skb)
                }
            },
        }
    }
}

impl AttachedMode {
    pub fn name(self) -> &'static str {
        match self {
            AttachedMode::Native => "native",
            AttachedMode::Skb => "skb",
        }
    }
}

/// The name of loaded program `id`, if it can be read.
pub(super) fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .and_then(|p| p.name_as_str().map(str::to_string))
}

/// The index of interface `name` in this network namespace.
pub fn interface_index(name: &str) -> std::io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string; the call only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such interface here",
        )),
        index => Ok(index),
    }
}

pub(super) fn sockops_program_mut(ebpf: &mut Ebpf) -> Result<&mut SockOps, GuardError> {
    let program = ebpf
        .program_mut(names::SOCKOPS_PROGRAM)
        .ok_or(GuardError::MissingProgram(names::SOCKOPS_PROGRAM))?;
    program.try_into().map_err(|source| GuardError::Load {
        program: names::SOCKOPS_PROGRAM,
        source,
    })
}

/// Where the cgroup v2 hierarchy is mounted (its root), from /proc/mounts.
pub fn cgroup2_root() -> Result<PathBuf, GuardError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(GuardError::Host)?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .ok_or(GuardError::NoCgroup2)
}

impl HostFacts {
    /// CPUs online, and the cookie of the network namespace this process runs in.
    pub fn of_this_host() -> Result<HostFacts, GuardError> {
        let cpus = aya::util::online_cpus()
            .map_err(|(_, e)| GuardError::Host(e))?
            .len() as u32;
        let netns_cookie = match netns_cookie() {
            Ok(cookie) => cookie,
            // Before Linux 5.14: no cookie, and sock_ops could not compare it either (5.15),
            // so the counts take in every namespace (`kernel_features` says so).
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => 0,
            Err(e) => return Err(GuardError::Host(e)),
        };
        Ok(HostFacts { cpus, netns_cookie })
    }
}

/// The cookie of this process's network namespace (SO_NETNS_COOKIE, Linux 5.14+;
/// ENOPROTOOPT before).
pub fn netns_cookie() -> std::io::Result<u64> {
    const SO_NETNS_COOKIE: libc::c_int = 71;
    // SAFETY: a plain UDP socket, closed below; getsockopt writes at most `len` bytes.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut cookie: u64 = 0;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc != 0 {
            return Err(err);
        }
        Ok(cookie)
    }
}

pub(super) fn xdp_program_mut(ebpf: &mut Ebpf) -> Result<&mut Xdp, GuardError> {
    let program = ebpf
        .program_mut(names::XDP_PROGRAM)
        .ok_or(GuardError::MissingProgram(names::XDP_PROGRAM))?;
    program.try_into().map_err(|source| GuardError::Load {
        program: names::XDP_PROGRAM,
        source,
    })
}

/// Pins a freshly made link at `path`, where it outlives this process.
pub(super) fn pin_link<L>(link: L, path: &std::path::Path) -> Result<(), GuardError>
where
    FdLink: TryFrom<L, Error = LinkError>,
{
    let fd = FdLink::try_from(link).map_err(|source| GuardError::Link {
        path: path.to_path_buf(),
        source,
    })?;
    fd.pin(path).map_err(|source| GuardError::PinLink {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}
