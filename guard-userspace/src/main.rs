//! The `mailguard` command line.

mod list_commands;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use list_commands::{ListAction, ListsAction};
use mailguard::{
    cli::status::Status,
    config::lists::ListName,
    config::{self, AttachMode, Config},
    daemon::budget_view::{self, BudgetView},
    daemon::control,
    daemon::run::{self, RunOptions},
    daemon::state::{self, Dirs, RunState, StateError},
};

/// Exit codes, as documented in docs/OPERATIONS.md.
pub(crate) mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const INVALID_CONFIG: u8 = 2;
    pub const NOT_RUNNING: u8 = 3;
    pub const ROLLED_BACK: u8 = 4;
    pub const NOT_ATTACHED: u8 = 5;
}

/// XDP connection guard for mail servers.
///
/// Drops traffic that has no business reaching a mail server at the NIC, before the kernel
/// spends anything on it, while mail, opened ports, replies to the host's own connections and
/// the ICMP/NDP the network needs pass.
#[derive(Parser)]
#[command(name = "mailguard", version, propagate_version = true)]
#[command(
    after_help = "Exit codes: 0 success, 1 failure, 2 invalid configuration or arguments, 3 mailguard not \
                  loaded or not running, 4 a change was not confirmed in time and was rolled back, 5 (status) \
                  loaded but not attached: its interface went away."
)]
struct Cli {
    /// bpffs directory for mailguard's pinned maps.
    #[arg(long, global = true, env = "MAILGUARD_PIN_DIR", default_value = state::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Directory for the state file of the running mailguard.
    #[arg(long, global = true, env = "MAILGUARD_RUN_DIR", default_value = state::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to an interface and guard it (foreground daemon; SIGHUP re-reads the
    /// configuration). The protection is pinned: it stays when the daemon ends (SIGTERM,
    /// SIGKILL, crash), and the next `run` adopts it, replacing the program atomically.
    /// `mailguard unload` removes it.
    Run {
        /// Interface to attach to (overrides `interface` in the configuration).
        #[arg(long)]
        iface: Option<String>,
        /// Configuration file [default: /etc/mailguard/mailguard.toml when it exists,
        /// else built-in defaults].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Attach mode (overrides `attach_mode`): auto tries native, then generic (skb).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// Count every verdict but drop nothing (overrides `monitor`).
        #[arg(long)]
        monitor: bool,
        /// Unload again unless `mailguard confirm` arrives within this many seconds (to try a
        /// configuration on a remote host without risking a lock-out).
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=control::MAX_CONFIRM_SECONDS))]
        confirm_within: Option<u64>,
        /// Start even if the configuration would cut a live session into this host (found in
        /// the socket table) or block every source.
        #[arg(long)]
        force: bool,
    },
    /// Make the running daemon re-read its configuration file (as SIGHUP does). A bad file is
    /// refused with its error and the configuration in force stays; so is one that would cut a
    /// live session into this host or block every source, unless --force.
    Reload {
        /// Roll the change back unless `mailguard confirm` arrives within this many seconds.
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=control::MAX_CONFIRM_SECONDS))]
        confirm_within: Option<u64>,
        /// Apply it even if it would cut a live session or block every source.
        #[arg(long)]
        force: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Keep the change that `run --confirm-within` or `reload --confirm-within` made.
    Confirm {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) generated from this command line.
    Man,
    /// The watchdog of a confirm window (started by the daemon; not for direct use).
    #[command(hide = true)]
    ConfirmWatch {
        #[arg(long)]
        token: u64,
    },
    /// Show where mailguard is attached and its packet counters by reason.
    Status {
        /// Print JSON (all reasons, zero counts included).
        #[arg(long)]
        json: bool,
        /// Also list reasons that counted no packet.
        #[arg(long)]
        all: bool,
    },
    /// List the sources with the most concurrent connections to mail ports, then the most
    /// refused and new connections, from the running mailguard's maps.
    Top {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// How many sources to list.
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
    },
    /// Stop the daemon (if it runs), detach mailguard and remove its pinned state: the host is
    /// unprotected afterwards.
    Unload {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The MX allowlist: with `mx_only`, the only sources port 25 accepts.
    Allow {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Trusted sources: exempt from the budgets.
    Trust {
        #[command(subcommand)]
        action: ListAction,
    },
    /// Blocked sources: dropped on every port (`add --for 1h` blocks for an hour).
    Block {
        #[command(subcommand)]
        action: ListAction,
    },
    /// The lists at a glance, and refreshing their files and SPF records.
    Lists {
        #[command(subcommand)]
        action: ListsAction,
    },
    /// Validate a configuration file without applying it.
    CheckConfig {
        /// File to check.
        #[arg(long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Print the resolved configuration as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Auto,
    Native,
    Skb,
}

impl From<ModeArg> for AttachMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => AttachMode::Auto,
            ModeArg::Native => AttachMode::Native,
            ModeArg::Skb => AttachMode::Skb,
        }
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let dirs = Dirs {
        pin: cli.pin_dir,
        run: cli.run_dir,
    };
    match dispatch(cli.command, dirs) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mailguard: {e:#}");
            ExitCode::from(exit_code_of(&e))
        }
    }
}

/// Logs as `key=value` lines (logfmt): `level=warn msg="..."`, with a UTC timestamp unless
/// journald adds its own (`JOURNAL_STREAM` set). `MAILGUARD_LOG` sets the level (default info).
fn init_logging() {
    use std::io::Write as _;
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("MAILGUARD_LOG", "info"))
        .format(move |buf, record| {
            let msg = record
                .args()
                .to_string()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            let level = record.level().as_str().to_ascii_lowercase();
            if journald {
                writeln!(buf, "level={level} msg=\"{msg}\"")
            } else {
                writeln!(buf, "time={} level={level} msg=\"{msg}\"", buf.timestamp())
            }
        })
        .init();
}

fn exit_code_of(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<config::ConfigError>().is_some() {
            return exit::INVALID_CONFIG;
        }
        // RunError's variants are transparent: the ConfigError inside is not in the chain.
        if cause
            .downcast_ref::<run::RunError>()
            .is_some_and(run::RunError::refused_input)
        {
            return exit::INVALID_CONFIG;
        }
        if let Some(mailguard::daemon::control::ControlError::Unreachable { .. }) =
            cause.downcast_ref()
        {
            return exit::NOT_RUNNING;
        }
        if let Some(run::RunError::RolledBack) = cause.downcast_ref() {
            return exit::ROLLED_BACK;
        }
        if let Some(StateError::NotRunning { .. }) = cause.downcast_ref() {
            return exit::NOT_RUNNING;
        }
    }
    exit::FAILURE
}

fn dispatch(command: Command, dirs: Dirs) -> anyhow::Result<u8> {
    match command {
        Command::Run {
            iface,
            config,
            mode,
            monitor,
            confirm_within,
            force,
        } => {
            raise_memlock_limit();
            let opts = RunOptions {
                iface,
                config,
                mode: mode.map(Into::into),
                monitor,
                confirm_within: confirm_within.map(std::time::Duration::from_secs),
                force,
                dirs,
            };
            run::run(opts).context("mailguard run")?;
            Ok(exit::OK)
        }
        Command::ConfirmWatch { token } => {
            raise_memlock_limit();
            run::confirm_watch(&dirs, token).context("mailguard confirm-watch")?;
            Ok(exit::OK)
        }
        Command::Status { json, all } => {
            let state = RunState::read(&dirs)?;
            if !mailguard::kernel::pins::Pins::new(&dirs.pin).attached() && !state.daemon_alive() {
                return Err(StateError::NotRunning {
                    path: dirs.pin.join("xdp_link"),
                }
                .into());
            }
            let counters = state::pinned_counters(&dirs)?;
            let settings = state::pinned_settings(&dirs)?;
            let cpus = mailguard::kernel::policy::HostFacts::of_this_host()?.cpus;
            let budgets = BudgetView::read(&dirs, cpus)?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // Whether the program is on its interface, from the kernel itself (the daemon, when
            // it runs, records since when it is not).
            let pinned_on = mailguard::kernel::pins::xdp_link_ifindex(
                &mailguard::kernel::pins::Pins::new(&dirs.pin).xdp_link(),
            )
            .ok();
            let on_iface = mailguard::kernel::attach::interface_index(&state.interface).ok();
            let attached = on_iface.is_some() && on_iface == pinned_on;
            let mut status = Status::new(state, settings, &counters, budgets, now);
            status.attached = attached;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.render(all));
            }
            Ok(if attached {
                exit::OK
            } else {
                exit::NOT_ATTACHED
            })
        }
        Command::Top { json, limit } => {
            let state = RunState::read(&dirs)?;
            let rows = budget_view::top(&dirs, limit)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", budget_view::render_top(&rows));
                if let Some(bans) = &state.bans {
                    print!(
                        "{}",
                        mailguard::cli::status::render_bans(
                            bans,
                            mailguard::feeds::saved::now_unix()
                        )
                    );
                }
            }
            Ok(exit::OK)
        }
        Command::Reload {
            confirm_within,
            force,
            json,
        } => {
            let response = control::request(
                &dirs,
                &control::Request::Reload {
                    confirm_within,
                    force,
                },
            )?;
            print_response(&response, json)
        }
        Command::Confirm { json } => {
            let response = control::request(&dirs, &control::Request::Confirm)?;
            print_response(&response, json)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "mailguard",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .section("8")
                .render(&mut std::io::stdout())?;
            Ok(exit::OK)
        }
        Command::Unload { json } => {
            let previous = RunState::read(&dirs).ok();
            if let Some(state) = previous.as_ref().filter(|s| s.daemon_alive()) {
                // SAFETY: signals the recorded daemon process by pid.
                unsafe { libc::kill(state.pid as i32, libc::SIGTERM) };
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
                while state.daemon_alive() && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                anyhow::ensure!(
                    !state.daemon_alive(),
                    "the daemon (pid {}) did not stop within 10 s",
                    state.pid
                );
            }
            let removed = mailguard::kernel::pins::Pins::new(&dirs.pin).remove_all()?;
            state::forget(&dirs)?;
            // Nothing is on trial any more (its watchdog sees that and ends).
            mailguard::daemon::confirm::disarm(&dirs);
            let interface = previous.as_ref().map(|s| s.interface.clone());
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "unloaded": removed, "interface": interface })
                );
            } else if removed {
                println!(
                    "mailguard unloaded{}: the host is no longer protected",
                    interface.map_or(String::new(), |i| format!(" from {i}"))
                );
            } else {
                println!("nothing to unload under {}", dirs.pin.display());
            }
            Ok(if removed { exit::OK } else { exit::NOT_RUNNING })
        }
        Command::Allow { action } => list_commands::edit(&dirs, ListName::MxAllow, action),
        Command::Trust { action } => list_commands::edit(&dirs, ListName::Trusted, action),
        Command::Block { action } => list_commands::edit(&dirs, ListName::Block, action),
        Command::Lists { action } => list_commands::lists(&dirs, action),
        Command::CheckConfig { config, json } => {
            let (cfg, warnings) = Config::load(&config)?;
            if json {
                let out = serde_json::json!({
                    "valid": true,
                    "config": cfg,
                    "warnings": warnings.iter().map(|w| w.0.clone()).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{}: valid", config.display());
                for w in &warnings {
                    println!("warning: {w}");
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Prints the daemon's answer; a refusal is a failure (exit 1).
pub(crate) fn print_response(response: &control::Response, json: bool) -> anyhow::Result<u8> {
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": response.ok, "message": response.message })
        );
    } else if response.ok {
        println!("{}", response.message);
    } else {
        eprintln!("mailguard: {}", response.message);
    }
    Ok(if response.ok { exit::OK } else { exit::FAILURE })
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; lift it (harmless on newer ones).
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "cannot raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
