//! Layer 3, the list feeds: where list entries come from besides the configuration.
//!
//! - `saved`: fetched and run-time entries, kept in the state directory (`lists.json`)
//! - `spf`, `dns`: a provider's ranges from its SPF record
//! - `keeper`: the daemon's side of the lists (refreshes, run-time edits)

pub mod dns;
pub mod keeper;
pub mod saved;
pub mod spf;
