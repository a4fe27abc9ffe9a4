//! `cargo xtask test`: formatting, lints on host and eBPF crates, unit
//! tests (also with the clock a month ahead), the privileged end-to-end
//! tests in `tests/`, and each fuzz target for a bounded time.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell;

pub fn run(filter: Option<&str>) -> anyhow::Result<()> {
    shell::cargo(&["fmt", "--all", "--", "--check"])?;
    shell::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ])?;
    clippy_ebpf()?;
    shell::cargo(&["build", "--release", "--package", "selfops-agent"])?;
    if !shell::is_root() {
        eprintln!(
            "xtask test: not root: privileged tests will {}",
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                "fail (CI=true)"
            } else {
                "skip, saying why"
            }
        );
    }
    let mut args = vec!["test", "--workspace", "--release"];
    if let Some(filter) = filter {
        args.push(filter);
    }
    shell::cargo(&args)?;
    if filter.is_none() {
        unit_tests_a_month_ahead()?;
    }
    // Every parser of untrusted bytes, briefly: a regression that crashes
    // within seconds fails CI. Longer campaigns: `cargo xtask fuzz`.
    if filter.is_none() {
        crate::fuzz::run(FUZZ_SECONDS, None)?;
    }
    Ok(())
}

/// The agent's unit tests once more with the wall clock 31 days ahead
/// (Debian's `faketime`): none may depend on the date they were written.
/// The test executable cargo already built runs directly: cargo itself
/// under a faked clock (and faked file times) would rebuild the crate.
fn unit_tests_a_month_ahead() -> anyhow::Result<()> {
    let executable = agent_unit_test_executable()?;
    let mut command = Command::new("faketime");
    // As `cargo test` does: tests run from their package's directory.
    command
        .args(["-f", "+31d"])
        .arg(executable)
        .current_dir(shell::workspace_root().join("agent"));
    shell::run(command)
}

/// The path of the agent's built lib-test executable, from cargo's
/// machine-readable build messages.
fn agent_unit_test_executable() -> anyhow::Result<std::path::PathBuf> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["test", "--release", "--package", "selfops-agent", "--lib"])
        .args(["--no-run", "--message-format=json"])
        .current_dir(shell::workspace_root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("listing the agent's unit-test executable")?;
    if !output.status.success() {
        bail!("building the agent's unit tests failed: {}", output.status);
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["profile"]["test"] == true)
        .filter(|message| message["target"]["name"] == "selfops_agent")
        .find_map(|message| message["executable"].as_str().map(std::path::PathBuf::from))
        .context("cargo named no unit-test executable for selfops-agent")
}

/// Seconds per fuzz target in `cargo xtask test`.
const FUZZ_SECONDS: u64 = 30;

/// The kernel programs only build for the BPF target, with the nightly
/// toolchain; lint them there, in their own target directory.
fn clippy_ebpf() -> anyhow::Result<()> {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "clippy"])
        .args(["--package", "selfops-ebpf", "--bins", "--features", "ebpf"])
        .args([
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .args(["--", "-D", "warnings"])
        .env(
            "CARGO_TARGET_DIR",
            shell::workspace_root().join("target/ebpf-clippy"),
        )
        // As aya-build does: the programs are built for the host's kernel.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    shell::run(command)
}
