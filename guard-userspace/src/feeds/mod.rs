//! Layer 3, the list feeds: where list entries come from besides the configuration.
//!
//! - `saved`: fetched and run-time entries, kept in the state directory (`lists.json`)
//! - `spf`, `dns`: a provider's ranges from its SPF record
//! - `keeper`: the daemon's side of the lists (refreshes, run-time edits)
//! - `maillog`: Postfix and Dovecot log lines as ban events (authentication failures,
//!   unknown recipients), the client's address taken only from where the server writes it
//! - `follow`: a log file followed through rotation and truncation, with a checkpoint
//! - `journal`: the systemd journal's mail facility (journalctl's JSON records), with its cursor
//! - `bans`: the ban rules: events counted per source and prefix in windows, bans with
//!   escalation, exemptions and caps
//! - `ban_sources`: the threads that read the files, the journal and the policy reports, and
//!   hand their events to the daemon
//! - `auth_policy`: Dovecot's authentication policy service, answered
//! - `ban_state`: the bans in force, the sources' places and the rules' counts (`bans.json`)
//! - `crowdsec`: a CrowdSec Local API's decisions (the stream read, checked and kept)

pub mod auth_policy;
pub mod ban_sources;
pub mod ban_state;
pub mod bans;
pub mod crowdsec;
pub mod dns;
pub mod follow;
pub mod journal;
pub mod keeper;
pub mod maillog;
pub mod saved;
pub mod spf;
