//! The loaded eBPF object: loading (with the verifier log on failure), attaching, and access to
//! the maps that hold the policy and the counters.

use std::path::PathBuf;

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, links::LinkError},
};
use guard_common::{
    COUNTER_SLOTS, FEATURES_GLOBAL, Reason, SourceBucket, SourceKey, V6_INDEX_ACTIVE_BITS,
    maps as names, source_bucket, source_buckets, v6_buckets_for,
};

use crate::kernel::attach::{sockops_program_mut, xdp_program_mut};
use crate::{
    config::Config,
    config::budgets::Budgets,
    kernel::features::KernelFeatures,
    kernel::index_v4::IndexMaps,
    kernel::index_v6::{PrefixTable, V6IndexMaps},
    kernel::mapped::MappedArray,
    kernel::pins::{PinError as PinsError, Pins},
    kernel::policy::HostFacts,
    kernel::policy_maps::PolicyMaps,
};

/// The eBPF object built from guard-ebpf by build.rs.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("cannot parse the embedded eBPF object: {0}")]
    Object(#[source] EbpfError),
    #[error("the kernel refused to load program `{program}`: {source}")]
    Load {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
    #[error("map `{map}`: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot attach XDP to interface `{iface}` in {mode} mode: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("cannot pin map `{map}` at {path}: {source}")]
    Pin {
        map: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot create pin directory {}: {source}", path.display())]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open cgroup {}: {source}", path.display())]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup v2 mount in /proc/mounts: connection counting needs one")]
    NoCgroup2,
    #[error("cannot attach sock_ops to cgroup {}: {source}", path.display())]
    AttachSockOps {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error(transparent)]
    Pins(#[from] PinsError),
    #[error("pinned link {}: {source}", path.display())]
    Link {
        path: PathBuf,
        #[source]
        source: LinkError,
    },
    #[error("cannot pin link at {}: {source}", path.display())]
    PinLink {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("cannot replace the program in the pinned link {}: {source}", path.display())]
    Replace {
        path: PathBuf,
        #[source]
        source: ProgramError,
    },
    #[error("cannot read this host's facts: {0}")]
    Host(#[source] std::io::Error),
    #[error("cannot read program information: {0}")]
    Info(#[source] ProgramError),
    #[error(transparent)]
    Mapped(#[from] crate::kernel::mapped::MappedError),
    #[error(transparent)]
    Kernel(#[from] crate::kernel::features::Unsupported),
    #[error(
        "cannot attach XDP to interface `{iface}` in {mode} mode: another XDP program is attached \
         there (id {id}{}): detach it first (`ip link set dev {iface} xdp off`, or \
         `xdp-loader unload {iface} --all` for a program of xdp-tools); nothing was changed",
        name.as_ref().map_or(String::new(), |n| format!(", `{n}`"))
    )]
    Occupied {
        iface: String,
        mode: &'static str,
        id: u32,
        name: Option<String>,
    },
    #[error(
        "list `{list}`: {entries} {family} entries do not fit: a list holds at most {max} per \
         family (its configuration, files, SPF records and run-time entries together); nothing \
         was changed"
    )]
    ListTooLarge {
        list: &'static str,
        family: &'static str,
        entries: usize,
        max: usize,
    },
    #[error("interface `{iface}` (`ip link` lists the interfaces)")]
    Interface {
        iface: String,
        #[source]
        source: std::io::Error,
    },
}

impl GuardError {
    pub fn map(map: &'static str) -> impl FnOnce(MapError) -> GuardError {
        move |source| GuardError::Map { map, source }
    }
}

/// The loaded programs and maps.
pub struct Guard {
    pub(super) ebpf: Ebpf,
    /// The index tables, mapped on the first `policy_maps` and kept for the life of these
    /// maps: mapping them again at every update would cost a ban most of its time.
    mapped: Option<(IndexMaps, MappedArray<guard_common::V6Bucket>)>,
}

impl Guard {
    /// Loads the embedded object and its programs into the kernel (not attached yet), with the
    /// tracking maps sized as `budgets` says.
    pub fn load(config: &Config) -> Result<Guard, GuardError> {
        Guard::load_with(EBPF_OBJECT, config, None, 0)
    }

    /// As `load`, from another build of guard-ebpf's object (the bench's "before", compared
    /// with this build's in one run). Its maps must be the ones guard-common defines.
    pub fn load_object(object: &[u8], config: &Config) -> Result<Guard, GuardError> {
        Guard::load_with(object, config, None, 0)
    }

    /// As `load`, as if the kernel lacked the optional features `absent` (`FEATURE_*` bits):
    /// for tests of the way mailguard works on older kernels, on a newer one.
    pub fn load_without(config: &Config, absent: u32) -> Result<Guard, GuardError> {
        Guard::load_with(EBPF_OBJECT, config, None, absent)
    }

    /// Loads as `load`, with every map pinned under `pins`: maps a previous run pinned are
    /// reused when they match what the program expects, and recreated (reported) otherwise.
    pub fn load_pinned(config: &Config, pins: &Pins) -> Result<(Guard, Vec<String>), GuardError> {
        let budgets = &config.budgets;
        // New maps of a start that crashed before it committed them.
        pins.discard_new_maps();
        let mismatched = pins.check_maps(EBPF_OBJECT, config)?;
        let fresh: Vec<&str> = mismatched.iter().map(|(name, _)| name.as_str()).collect();
        let mut recreated: Vec<String> = mismatched.iter().map(|(_, why)| why.clone()).collect();
        std::fs::create_dir_all(pins.maps_dir()).map_err(|source| GuardError::PinDir {
            path: pins.maps_dir(),
            source,
        })?;
        let is_new = |name: &str| fresh.contains(&name) || !pins.map(name).exists();
        // A source table created beside a reused socket table (`tracked_sources` changed, or a
        // new layout) has no connection counts in its buckets, which would hide the open
        // connections from XDP: rebuild them.
        let rebuild = is_new(names::SOURCES) && !is_new(names::SOCKETS);
        // A new (empty) IPv6 prefix table beside pinned settings that say lists are indexed in
        // it would miss every prefix: those lists go back to their tries until the next update
        // indexes them again.
        let new_v6_table = is_new(names::V6_TABLE);
        let mut guard = Guard::load_with(EBPF_OBJECT, config, Some((pins, &fresh)), 0)?;
        if new_v6_table {
            guard.forget_v6_index()?;
        }
        if rebuild {
            let n = guard.rebuild_bucket_counts(budgets)?;
            recreated.push(format!(
                "map {}: connection counts rebuilt from the {n} connections counted in {}",
                names::SOURCES,
                names::SOCKETS
            ));
        }
        Ok((guard, recreated))
    }

    /// Loads the programs over the pinned maps as they are, none checked or recreated: for
    /// writing a policy into the maps in force (the confirm window's watchdog), never attached.
    pub fn over_pinned_maps(config: &Config, pins: &Pins) -> Result<Guard, GuardError> {
        Guard::load_with(EBPF_OBJECT, config, Some((pins, &[])), 0)
    }

    /// The array map `name` of the loaded object, with values of type `V`.
    fn array<V: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, V>, GuardError> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(GuardError::MissingMap(name))?;
        Array::try_from(map).map_err(GuardError::map(name))
    }

    /// Clears the IPv6 lists' index bits in the settings: XDP looks them up in their tries.
    fn forget_v6_index(&mut self) -> Result<(), GuardError> {
        let mut settings: Array<_, guard_common::Settings> = self.array(names::SETTINGS)?;
        let mut s = settings
            .get(&0, 0)
            .map_err(GuardError::map(names::SETTINGS))?;
        s.index &= !V6_INDEX_ACTIVE_BITS;
        settings
            .set(0, s, 0)
            .map_err(GuardError::map(names::SETTINGS))
    }

    /// Fills the connection counts of a new source table's buckets from the socket table (every
    /// counted open connection). Connections sock_ops counts or uncounts meanwhile may be off
    /// by one in their bucket: one too many costs XDP a needless count lookup, one too few lets
    /// that source past its cap until the connection closes (fails open). Returns how many
    /// connections were added.
    fn rebuild_bucket_counts(&mut self, budgets: &Budgets) -> Result<usize, GuardError> {
        let buckets = source_buckets(budgets.tracked_sources);
        let mut counts: std::collections::HashMap<u32, u32> = Default::default();
        {
            let map = self
                .ebpf
                .map(names::SOCKETS)
                .ok_or(GuardError::MissingMap(names::SOCKETS))?;
            let sockets: aya::maps::HashMap<_, u64, SourceKey> =
                aya::maps::HashMap::try_from(map).map_err(GuardError::map(names::SOCKETS))?;
            for key in sockets.iter().filter_map(Result::ok).map(|(_, k)| k) {
                *counts
                    .entry(source_bucket(key.slot_hash(), buckets))
                    .or_default() += 1;
            }
        }
        let mut table: Array<_, SourceBucket> = self.array(names::SOURCES)?;
        for (&b, &n) in &counts {
            let mut bucket = table.get(&b, 0).map_err(GuardError::map(names::SOURCES))?;
            bucket.connections = n;
            table
                .set(b, bucket, 0)
                .map_err(GuardError::map(names::SOURCES))?;
        }
        Ok(counts.values().sum::<u32>() as usize)
    }

    /// Loads the object; with `pins`, its maps pinned there, those named in the second part
    /// pinned beside the ones in force (`Pins::map_new`) until the start commits them; the
    /// programs told that the features `absent` are not there.
    fn load_with(
        object: &[u8],
        config: &Config,
        pins: Option<(&Pins, &[&str])>,
        absent: u32,
    ) -> Result<Guard, GuardError> {
        let budgets = &config.budgets;
        let kernel = KernelFeatures::probed();
        kernel.check()?;
        let bits = kernel.bits & !absent;
        let mut loader = EbpfLoader::new();
        loader
            .override_global(FEATURES_GLOBAL, &bits, true)
            .map_max_entries(
                names::V6_TABLE,
                v6_buckets_for(config.lists.ipv6_index_capacity),
            )
            .map_max_entries(names::SOURCES, source_buckets(budgets.tracked_sources))
            .map_max_entries(names::CONNECTIONS, budgets.tracked_connections)
            .map_max_entries(names::SOCKETS, budgets.tracked_connections);
        if let Some((pins, fresh)) = pins {
            for name in names::ALL {
                let path = if fresh.contains(name) {
                    pins.map_new(name)
                } else {
                    pins.map(name)
                };
                loader.map_pin_path(name, path);
            }
        }
        let mut ebpf = loader.load(object).map_err(GuardError::Object)?;
        let program = xdp_program_mut(&mut ebpf)?;
        program.load().map_err(|source| GuardError::Load {
            program: names::XDP_PROGRAM,
            source,
        })?;
        let sockops = sockops_program_mut(&mut ebpf)?;
        sockops.load().map_err(|source| GuardError::Load {
            program: names::SOCKOPS_PROGRAM,
            source,
        })?;
        Ok(Guard { ebpf, mapped: None })
    }

    pub fn xdp(&self) -> Result<&Xdp, GuardError> {
        let program = self
            .ebpf
            .program(names::XDP_PROGRAM)
            .ok_or(GuardError::MissingProgram(names::XDP_PROGRAM))?;
        program.try_into().map_err(|source| GuardError::Load {
            program: names::XDP_PROGRAM,
            source,
        })
    }

    /// Instructions the verifier processed for the XDP program (kernel 5.16+ reports them).
    pub fn verified_instructions(&self) -> Result<Option<u32>, GuardError> {
        let info = self.xdp()?.info().map_err(GuardError::Info)?;
        Ok(info.verified_instruction_count())
    }

    /// Instructions the verifier processed for each program, XDP and sock_ops (kernel 5.16+
    /// reports them).
    pub fn verified_by_program(&self) -> Result<Vec<(&'static str, Option<u32>)>, GuardError> {
        let names = [names::XDP_PROGRAM, names::SOCKOPS_PROGRAM];
        let mut counts = Vec::new();
        for name in names {
            let program = self
                .ebpf
                .program(name)
                .ok_or(GuardError::MissingProgram(name))?;
            let info = program.info().map_err(GuardError::Info)?;
            counts.push((name, info.verified_instruction_count()));
        }
        Ok(counts)
    }

    /// Total run time and run count of a program (kept by the kernel while BPF statistics are
    /// enabled, see `aya::sys::enable_stats`).
    pub fn run_stats(
        &self,
        program: &'static str,
    ) -> Result<(std::time::Duration, u64), GuardError> {
        let p = self
            .ebpf
            .program(program)
            .ok_or(GuardError::MissingProgram(program))?;
        let info = p.info().map_err(GuardError::Info)?;
        Ok((info.run_time(), info.run_count()))
    }

    /// The kernel's id of the loaded XDP program.
    pub fn program_id(&self) -> Result<u32, GuardError> {
        Ok(self.xdp()?.info().map_err(GuardError::Info)?.id())
    }

    /// The policy maps, for writing a configuration into them.
    pub fn policy_maps(&mut self) -> Result<PolicyMaps<&mut MapData>, GuardError> {
        let host = HostFacts::of_this_host()?;
        if self.mapped.is_none() {
            let map = |name: &'static str| self.ebpf.map(name).ok_or(GuardError::MissingMap(name));
            let index = IndexMaps::open(
                map(names::V4_INDEX_16)?,
                map(names::V4_INDEX_24)?,
                map(names::V4_INDEX_32)?,
            )?;
            let v6_table = MappedArray::open(map(names::V6_TABLE)?, names::V6_TABLE, true)?;
            self.mapped = Some((index, v6_table));
        }
        let (index, v6_table) = self.mapped.clone().expect("mapped above");
        let [
            settings,
            ports,
            v4,
            v6,
            budgets,
            budget_settings,
            trusted_v4,
            trusted_v6,
            mx_allow_v4,
            mx_allow_v6,
            block_v4,
            block_v6,
            v6_lengths,
        ] = self.ebpf.maps_disjoint_mut([
            names::SETTINGS,
            names::PORT_RULES,
            names::OPEN_SOURCES_V4,
            names::OPEN_SOURCES_V6,
            names::BUDGETS,
            names::BUDGET_SETTINGS,
            names::TRUSTED_V4,
            names::TRUSTED_V6,
            names::MX_ALLOW_V4,
            names::MX_ALLOW_V6,
            names::BLOCK_V4,
            names::BLOCK_V6,
            names::V6_LENGTHS,
        ]);
        fn get<'a>(
            m: Option<&'a mut aya::maps::Map>,
            name: &'static str,
        ) -> Result<&'a mut aya::maps::Map, GuardError> {
            m.ok_or(GuardError::MissingMap(name))
        }
        Ok(PolicyMaps {
            settings: Array::try_from(get(settings, names::SETTINGS)?)
                .map_err(GuardError::map(names::SETTINGS))?,
            ports: Array::try_from(get(ports, names::PORT_RULES)?)
                .map_err(GuardError::map(names::PORT_RULES))?,
            open_v4: LpmTrie::try_from(get(v4, names::OPEN_SOURCES_V4)?)
                .map_err(GuardError::map(names::OPEN_SOURCES_V4))?,
            open_v6: LpmTrie::try_from(get(v6, names::OPEN_SOURCES_V6)?)
                .map_err(GuardError::map(names::OPEN_SOURCES_V6))?,
            budgets: Array::try_from(get(budgets, names::BUDGETS)?)
                .map_err(GuardError::map(names::BUDGETS))?,
            budget_settings: Array::try_from(get(budget_settings, names::BUDGET_SETTINGS)?)
                .map_err(GuardError::map(names::BUDGET_SETTINGS))?,
            trusted_v4: LpmTrie::try_from(get(trusted_v4, names::TRUSTED_V4)?)
                .map_err(GuardError::map(names::TRUSTED_V4))?,
            trusted_v6: LpmTrie::try_from(get(trusted_v6, names::TRUSTED_V6)?)
                .map_err(GuardError::map(names::TRUSTED_V6))?,
            mx_allow_v4: LpmTrie::try_from(get(mx_allow_v4, names::MX_ALLOW_V4)?)
                .map_err(GuardError::map(names::MX_ALLOW_V4))?,
            mx_allow_v6: LpmTrie::try_from(get(mx_allow_v6, names::MX_ALLOW_V6)?)
                .map_err(GuardError::map(names::MX_ALLOW_V6))?,
            block_v4: LpmTrie::try_from(get(block_v4, names::BLOCK_V4)?)
                .map_err(GuardError::map(names::BLOCK_V4))?,
            block_v6: LpmTrie::try_from(get(block_v6, names::BLOCK_V6)?)
                .map_err(GuardError::map(names::BLOCK_V6))?,
            index,
            v6_index: V6IndexMaps {
                table: PrefixTable(v6_table),
                lengths: Array::try_from(get(v6_lengths, names::V6_LENGTHS)?)
                    .map_err(GuardError::map(names::V6_LENGTHS))?,
            },
            host,
        })
    }

    /// A map of the loaded object, by name (for tests and inspection).
    pub fn map_mut(&mut self, name: &str) -> Option<&mut aya::maps::Map> {
        self.ebpf.map_mut(name)
    }

    pub fn map(&self, name: &str) -> Option<&aya::maps::Map> {
        self.ebpf.map(name)
    }

    /// Writes until when XDP may answer SYNs to each of `ports` with cookies made from the SYN
    /// alone (`COOKIE_PORTS`: CLOCK_MONOTONIC_COARSE ns, 0 never).
    pub fn set_cookie_ports(&mut self, ports: &[(u16, u64)]) -> Result<(), GuardError> {
        let mut array: Array<_, u64> = self.array(names::COOKIE_PORTS)?;
        for &(port, until) in ports {
            array
                .set(u32::from(port), until, 0)
                .map_err(GuardError::map(names::COOKIE_PORTS))?;
        }
        Ok(())
    }

    /// The packet counters, summed over CPUs.
    pub fn counters(&self) -> Result<Counters, GuardError> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .ok_or(GuardError::MissingMap(names::COUNTERS))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(GuardError::map(names::COUNTERS))?;
        Counters::read(&array)
    }
}

/// Packet counts by reason, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    slots: Vec<u64>,
}

impl Counters {
    pub fn read<T: std::borrow::Borrow<MapData>>(
        array: &PerCpuArray<T, u64>,
    ) -> Result<Counters, GuardError> {
        let mut slots = Vec::with_capacity(COUNTER_SLOTS as usize);
        for slot in 0..COUNTER_SLOTS {
            let per_cpu = array
                .get(&slot, 0)
                .map_err(GuardError::map(names::COUNTERS))?;
            slots.push(per_cpu.iter().sum());
        }
        Ok(Counters { slots })
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.slots.get(reason as usize).copied().unwrap_or(0)
    }

    /// Counts that grew from `earlier` to `self`, by reason (reasons that did not change are
    /// left out).
    pub fn delta(&self, earlier: &Counters) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| (r, self.get(r).saturating_sub(earlier.get(r))))
            .filter(|&(_, d)| d > 0)
            .collect()
    }
}
