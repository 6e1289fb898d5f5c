//! Running external commands, and reporting each set-up step as it happens.

use std::{
    env,
    path::Path,
    process::{Command, Stdio},
};

use crate::{Result, TaskError};

/// Prints one line saying what a step found or is doing.
pub fn step(name: &str, what: &str) {
    println!("  [{name}] {what}");
}

/// Whether `program` is an executable file somewhere on PATH.
pub fn have_command(program: &str) -> bool {
    which(program).is_some()
}

/// The first executable file named `program` on PATH.
pub fn which(program: &str) -> Option<String> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file() && is_executable(p))
        .map(|p| p.display().to_string())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

/// Runs a command to completion and returns its standard output.
pub fn capture(program: &str, args: &[&str]) -> std::io::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "`{program} {}` exited with {}",
            args.join(" "),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command with inherited output; a failure is reported as a failure of `step_name`.
pub fn run(step_name: &str, program: &str, args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    println!("  [{step_name}] $ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .status()
        .map_err(|e| TaskError::step(step_name, format!("cannot start `{program}`: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(TaskError::step(
            step_name,
            format!("`{program} {}` exited with {status}", args.join(" ")),
        ))
    }
}
