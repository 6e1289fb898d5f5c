//! mailguard's userspace, in five layers. Each imports only the layers above it in this list
//! (`tests/layers.rs` fails on an import that goes the other way); docs/ARCHITECTURE.md walks
//! through them.
//!
//! 1. [`config`]: the configuration file, validated whole into a [`config::Config`], with its
//!    sections (budgets, lists) and value types.
//! 2. [`kernel`]: the eBPF object: probing the kernel, loading, attaching, pins, writing a
//!    `Config` and the lists into the maps, reading the tables back.
//! 3. [`feeds`]: where list entries come from besides the configuration: files, SPF records
//!    over DNS, their saved state, and the keeper that refreshes them.
//! 4. [`daemon`]: `mailguard run`: starting, the control socket, signals, the confirm window,
//!    the run state other commands read, lock-out checks, metrics.
//! 5. [`cli`]: what the commands print: `status`, `top`, the lists.
//!
//! The `mailguard` binary (`main.rs`, `list_commands.rs`) parses the command line and calls
//! into these.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod feeds;
pub mod kernel;
