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
    /// ONNX models made into the corpus (kind and window, as
    /// `tests/python/onnx_models.py make` takes them).
    model_seeds: &'static [(&'static str, u32)],
}

const TARGETS: &[Target] = &[
    Target {
        name: "http1",
        dictionary: Some("http1.dict"),
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "http_prefix",
        dictionary: Some("http1.dict"),
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "conntrack_reply",
        dictionary: None,
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "unwind_table",
        dictionary: None,
        // Real ELF files with CFI: the fuzzer mutates from valid tables.
        seeds: &["/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6"],
        model_seeds: &[],
    },
    Target {
        name: "onnx_model",
        dictionary: None,
        seeds: &[],
        // Valid small networks: mutations reach the graph checks, not only
        // the protobuf parser.
        model_seeds: &[("score", 16), ("recon", 8), ("jump", 8)],
    },
    Target {
        name: "opamp",
        dictionary: None,
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "ottl",
        // Function names, paths and operators: random bytes rarely spell
        // a statement that gets past the parser.
        dictionary: Some("ottl.dict"),
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "otlp_http",
        dictionary: None,
        seeds: &[],
        model_seeds: &[],
    },
    Target {
        name: "k8s_pods",
        // JSON keys of a pod: random bytes rarely spell `ownerReferences`.
        dictionary: Some("k8s_pods.dict"),
        seeds: &[],
        model_seeds: &[],
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
        seed_models(&corpus, target.model_seeds);
        // Inputs that once crashed a target: libFuzzer runs every corpus
        // file first, so a regression fails the run at once.
        seed_regressions(&corpus, &fuzz_dir.join("regressions").join(target.name))?;
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

/// Best effort: without the Python environment `cargo xtask setup` makes,
/// the target starts from an empty corpus.
fn seed_models(corpus: &Path, models: &[(&str, u32)]) {
    let root = shell::workspace_root();
    let python = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("python/bin/python3");
    for (kind, window) in models {
        let out = corpus.join(format!("{kind}{window}.onnx"));
        if out.exists() {
            continue;
        }
        let made = Command::new(&python)
            .arg(root.join("tests/python/onnx_models.py"))
            .args(["make", kind, &window.to_string()])
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("xtask: could not make the seed model {}", out.display());
        }
    }
}

fn seed_regressions(corpus: &Path, dir: &Path) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let to = corpus.join(entry.file_name());
        std::fs::copy(entry.path(), &to).with_context(|| format!("seeding {}", to.display()))?;
    }
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
