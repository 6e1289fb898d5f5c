//! CrowdSec: mailguard as a bouncer of a Local API (LAPI), and as an agent of it. `lapi` talks
//! to it, `decisions` reads and keeps its decisions, `bouncer` is the thread that polls it,
//! `agent` the thread that pushes mailguard's own bans.

pub mod agent;
pub mod bouncer;
pub mod decisions;
pub mod lapi;
