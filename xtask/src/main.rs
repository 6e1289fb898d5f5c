//! mailguard's task runner: `cargo xtask <setup|build|test|demo|bench>`.

mod cmd;
mod setup;

use std::{fmt, process::ExitCode};

/// A task that could not be completed, naming the step that failed.
#[derive(Debug)]
pub struct TaskError {
    step: String,
    message: String,
}

impl TaskError {
    pub fn step(step: &str, message: impl Into<String>) -> Self {
        Self {
            step: step.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.message)
    }
}

pub type Result<T> = std::result::Result<T, TaskError>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what the build and tests need (idempotent)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(TaskError::step(
            "arguments",
            format!("unknown command `{other}`\n{USAGE}"),
        )),
        None => Err(TaskError::step(
            "arguments",
            format!("no command given\n{USAGE}"),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
