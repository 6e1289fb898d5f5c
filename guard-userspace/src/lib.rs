//! mailguard's userspace: configuration, loading and attaching the eBPF programs, writing the
//! policy maps, and the commands of the `mailguard` binary.
//!
//! - `config`: the TOML file and its validation (`budgets`: its `[budgets]` section)
//! - `control`: the control socket (`mailguard reload`, `confirm`)
//! - `guard`: the loaded eBPF object (load, attach, maps, counters)
//! - `policy`: a `Config` turned into map contents
//! - `pins`: what stays pinned in bpffs when the daemon is gone, and its reuse
//! - `metrics`: the Prometheus endpoint
//! - `run`: the daemon
//! - `state`: pins and the state file other commands read
//! - `status`: the `status` report

pub mod budget_view;
pub mod budgets;
pub mod config;
pub mod control;
pub mod guard;
pub mod metrics;
pub mod pins;
pub mod policy;
pub mod run;
pub mod state;
pub mod status;
