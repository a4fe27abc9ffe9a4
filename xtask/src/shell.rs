//! Running commands and reporting them.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `command` (from the workspace root unless it names a directory);
/// fails on a non-zero exit.
pub fn run(mut command: Command) -> anyhow::Result<()> {
    if command.get_current_dir().is_none() {
        command.current_dir(workspace_root());
    }
    eprintln!("xtask: {}", describe(&command));
    let status = command
        .status()
        .with_context(|| format!("starting {}", describe(&command)))?;
    if !status.success() {
        bail!("{} failed: {status}", describe(&command));
    }
    Ok(())
}

/// A command's stdout when it succeeds. Written here, not shared with the
/// tests crate: xtask must build on a fresh machine before `setup` has
/// installed the eBPF toolchain that the agent (and so the tests) need.
pub fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(args);
    run(command)
}

/// Runs `command` in the foreground and exits with its status (for `run`).
pub fn exec(mut command: Command) -> anyhow::Result<()> {
    command.current_dir(workspace_root());
    let status = command
        .status()
        .with_context(|| format!("starting {}", describe(&command)))?;
    std::process::exit(status.code().unwrap_or(1));
}

pub fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub fn is_root() -> bool {
    output("id", &["-u"]).is_some_and(|uid| uid.trim() == "0")
}
