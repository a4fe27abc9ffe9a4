//! `cargo xtask fuzz`: every cargo-fuzz target in `fuzz/`, each for a
//! bounded time, with its dictionary and seeds. `cargo xtask test` runs
//! them briefly; longer campaigns take `--seconds`.

use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::shell;

/// A fuzz target and what it starts from.
struct Target {
    name: &'static str,
    dictionary: Option<&'static str>,
    /// Files copied into the corpus before the first run.
    seeds: &'static [&'static str],
}

const TARGETS: &[Target] = &[
    Target {
        name: "http1",
        dictionary: Some("http1.dict"),
        seeds: &[],
    },
    Target {
        name: "unwind_table",
        dictionary: None,
        // Real ELF files with CFI: the fuzzer mutates from valid tables.
        seeds: &["/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6"],
    },
    Target {
        name: "opamp",
        dictionary: None,
        seeds: &[],
    },
];

/// Runs every target (or the one named) for `seconds` each; a crash or a
/// leak fails the run, and the reproducer stays under `fuzz/artifacts/`.
pub fn run(seconds: u64, only: Option<&str>) -> anyhow::Result<()> {
    let root = shell::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let target_dir = root.join("target/fuzz");
    let mut ran = 0;
    for target in TARGETS.iter().filter(|t| only.is_none_or(|o| o == t.name)) {
        let corpus = target_dir.join("corpus").join(target.name);
        seed(&corpus, target.seeds)?;
        let mut command = Command::new("rustup");
        command
            .args(["run", "nightly", "cargo", "fuzz", "run", target.name])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            // One process, the whole time: the run is bounded by time.
            .arg("-print_final_stats=1");
        if let Some(dictionary) = target.dictionary {
            command.arg(format!("-dict={}", fuzz_dir.join(dictionary).display()));
        }
        command
            .current_dir(&fuzz_dir)
            // The targets need the agent's parsers, not its kernel objects.
            .env("AYA_BUILD_SKIP", "1")
            .env("CARGO_TARGET_DIR", &target_dir)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WORKSPACE_WRAPPER");
        eprintln!("xtask: fuzzing {} for {seconds} s", target.name);
        let status = command
            .status()
            .with_context(|| format!("starting {}", shell::describe(&command)))?;
        anyhow::ensure!(
            status.success(),
            "fuzz target {} failed ({status}); the reproducer is under fuzz/artifacts/{}",
            target.name,
            target.name
        );
        ran += 1;
    }
    anyhow::ensure!(ran > 0, "no fuzz target named {}", only.unwrap_or(""));
    Ok(())
}

fn seed(corpus: &Path, seeds: &[&str]) -> anyhow::Result<()> {
    std::fs::create_dir_all(corpus).with_context(|| format!("creating {}", corpus.display()))?;
    for seed in seeds {
        let from = Path::new(seed);
        let (Some(name), true) = (from.file_name(), from.exists()) else {
            continue;
        };
        let to = corpus.join(name);
        if !to.exists() {
            std::fs::copy(from, &to).with_context(|| format!("seeding {}", to.display()))?;
        }
    }
    Ok(())
}
