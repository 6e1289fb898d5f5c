//! Layer 4, the daemon (`mailguard run`) and what other commands read of it.
//!
//! - `run`: starting (make-before-break over the pins), serving, stopping
//! - `control`: the control socket (`mailguard reload`, `confirm`, list edits)
//! - `confirm`: the confirm window that outlives the daemon (its watchdog process)
//! - `signals`: how the daemon waits for signals, requests and link events
//! - `state`: the run directory and the state file other commands read
//! - `lockout`: the live sessions a change would cut (refused unless forced)
//! - `spare`: what a ban or a remote decision must never block
//! - `bans`: the bans from the mail logs and Dovecot's policy reports
//! - `crowdsec`: a CrowdSec Local API's decisions, enforced
//! - `budget_view`: the budgets as they stand in the pinned maps
//! - `flood_watch`, `cookie_marks`: SYN floods seen, and the listeners marked for SYN cookies
//! - `metrics`: the Prometheus endpoint (`metrics_server`: its HTTP server)

pub mod bans;
pub mod budget_view;
pub mod confirm;
pub mod control;
pub mod cookie_marks;
pub mod crowdsec;
pub mod flood_watch;
pub mod lockout;
pub mod metrics;
pub mod metrics_server;
pub mod refusals;
pub mod run;
mod serve;
pub mod signals;
pub mod spare;
pub mod state;
