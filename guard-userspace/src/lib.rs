//! mailguard's userspace: configuration, loading and attaching the eBPF programs, writing the
//! policy maps, and the commands of the `mailguard` binary.
//!
//! - `config`: the TOML file and its validation (`budgets`: its `[budgets]` section)
//! - `control`: the control socket (`mailguard reload`, `confirm`)
//! - `confirm`: the confirm window that outlives the daemon (its watchdog process)
//! - `guard`: the loaded eBPF object (load, attach, maps, counters)
//! - `kernel_features`: what the running kernel offers (probed), what it lacks
//! - `link_watch`: interfaces coming and going (rtnetlink), for the daemon to follow its own
//! - `policy`: a `Config` turned into map contents
//! - `pins`: what stays pinned in bpffs when the daemon is gone, and its reuse
//! - `lists`: the source lists (mx_allow, trusted, block), their sources and saved state
//! - `list_index`: the IPv4 lists expanded into the index XDP reads in constant time
//! - `list_keeper`: the daemon's side of the lists (refreshes, run-time edits)
//! - `list_view`: how the lists are shown
//! - `lockout`: the live sessions a change would cut (refused unless forced)
//! - `spf`, `dns`: a provider's ranges from its SPF record
//! - `mapped`: mmapable array maps as memory
//! - `metrics`: the Prometheus endpoint (`metrics_server`: its HTTP server)
//! - `run`: the daemon (`signals`: how it waits for signals and requests)
//! - `source_table`: the per-source rate table as memory (for `status` and `top`)
//! - `state`: pins and the state file other commands read
//! - `status`: the `status` report

pub mod budget_view;
pub mod budgets;
pub mod config;
pub mod confirm;
pub mod control;
pub mod dns;
pub mod guard;
pub mod kernel_features;
pub mod link_watch;
pub mod list_index;
pub mod list_index_v6;
pub mod list_keeper;
pub mod list_view;
pub mod lists;
pub mod lockout;
pub mod mapped;
pub mod metrics;
pub mod metrics_server;
pub mod pins;
pub mod policy;
pub mod run;
pub mod signals;
pub mod source_table;
pub mod spf;
pub mod state;
pub mod status;
#[cfg(test)]
mod test_rng;
