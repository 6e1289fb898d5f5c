//! `mailguard allow|trust|block add|del|list` and `mailguard lists show|refresh`: requests to
//! the running daemon over the control socket.

use clap::Subcommand;
use ipnet::IpNet;
use mailguard::{
    cli::list_view::{self, ListStatus},
    config,
    config::lists::ListName,
    daemon::control,
    daemon::control::{Request, Response},
    daemon::state::Dirs,
    feeds::keeper::ListReport,
    feeds::saved::{ListEntry, ListSummary, now_unix},
};

use crate::exit;

#[derive(Subcommand)]
pub enum ListAction {
    /// Add CIDRs or addresses to the list (kept across restarts).
    Add {
        /// CIDRs (`198.18.0.0/24`, `2001:db8::/48`) or single addresses.
        #[arg(required = true, value_parser = parse_entry)]
        entries: Vec<IpNet>,
        /// Remove the entries again after this long (`90s`, `10m`, `1h`, `2d`, `1h30m`).
        #[arg(long = "for", value_name = "DURATION", value_parser = mailguard::config::durations::parse_duration)]
        duration: Option<u64>,
        /// Add them even if that cuts a live session into this host (the daemon reads its socket
        /// table) or blocks every source (0.0.0.0/0, ::/0).
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove run-time entries (entries from the configuration or a provider are changed
    /// there).
    Del {
        #[arg(required = true, value_parser = parse_entry)]
        entries: Vec<IpNet>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every entry of the list and where it comes from.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ListsAction {
    /// The lists at a glance: sizes, sources, last refresh, failures.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Fetch the lists' files and SPF records now and wait for the outcome.
    Refresh {
        /// Accept an update that shrinks a list by more than `lists.max_shrink`.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_entry(text: &str) -> Result<IpNet, String> {
    config::parse_cidr(text)
}

pub fn edit(dirs: &Dirs, list: ListName, action: ListAction) -> anyhow::Result<u8> {
    let (add, entries, seconds, force, json) = match action {
        ListAction::List { json } => return show_list(dirs, list, json),
        // The daemon refuses a block that would cut a live session (from its socket table)
        // or block every source, unless forced.
        ListAction::Add {
            entries,
            duration,
            force,
            json,
        } => (true, entries, duration, force, json),
        ListAction::Del { entries, json } => (false, entries, None, false, json),
    };
    let request = Request::ListEdit {
        list,
        add,
        entries: entries.iter().map(|n| n.to_string()).collect(),
        seconds,
        force,
    };
    let response = control::request(dirs, &request)?;
    crate::print_response(&response, json)
}

fn show_list(dirs: &Dirs, list: ListName, json: bool) -> anyhow::Result<u8> {
    let response = control::request(dirs, &Request::ListShow { list: Some(list) })?;
    let Some(data) = response.data.filter(|_| response.ok) else {
        return crate::print_response(&Response::failed(response.message), json);
    };
    let entries: Vec<ListEntry> = serde_json::from_value(data["entries"].clone())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "list": list, "entries": entries }))?
        );
    } else {
        print!("{}", list_view::render_entries(list, &entries, now_unix()));
    }
    Ok(exit::OK)
}

pub fn lists(dirs: &Dirs, action: ListsAction) -> anyhow::Result<u8> {
    let (request, json) = match action {
        ListsAction::Show { json } => (Request::ListShow { list: None }, json),
        ListsAction::Refresh { force, json } => (Request::ListRefresh { force }, json),
    };
    let response = control::request(dirs, &request)?;
    let Some(data) = response.data.clone() else {
        return crate::print_response(&response, json);
    };
    if json {
        let mut out = data;
        out["ok"] = response.ok.into();
        out["message"] = response.message.clone().into();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        if let Some(reports) = data.get("refresh") {
            let reports: Vec<ListReport> = serde_json::from_value(reports.clone())?;
            print!("{}", list_view::render_refresh(&reports));
        }
        let summaries: Vec<ListSummary> = serde_json::from_value(data["lists"].clone())?;
        let rows: Vec<ListStatus> = summaries
            .into_iter()
            .map(|s| ListStatus::of(s, None, None))
            .collect();
        let mx_only = data
            .get("mx_only")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        print!(
            "{}",
            list_view::render_summaries(&rows, mx_only, now_unix())
        );
        if !response.message.is_empty() {
            if response.ok {
                println!("{}", response.message);
            } else {
                eprintln!("mailguard: {}", response.message);
            }
        }
    }
    Ok(if response.ok { exit::OK } else { exit::FAILURE })
}
