//! ONNX models for the tests, made at test time with Python's `onnx`
//! package (`cargo xtask setup` installs it in `<target>/python`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{in_ci, workspace_root};

/// A Python with `onnx` and `onnxruntime`. Without one: under CI=true a
/// panic, elsewhere a message and None (the test returns early).
pub fn python(test: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        std::env::var_os("SELFOPS_PYTHON").map(PathBuf::from),
        Some(target.join("python/bin/python3")),
        Some(PathBuf::from("python3")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", "import onnx, onnxruntime"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    let why = format!("{test}: no Python with onnx and onnxruntime (run `cargo xtask setup`)");
    if in_ci() {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIP {why}");
    None
}

/// Makes a model with `tests/python/onnx_models.py make KIND WINDOW` at
/// `out`; panics if Python fails.
pub fn make_model(python: &Path, kind: &str, window: u32, out: &Path) {
    let status = Command::new(python)
        .arg(workspace_root().join("tests/python/onnx_models.py"))
        .args(["make", kind, &window.to_string()])
        .arg(out)
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(status.success(), "making the {kind} model failed: {status}");
}
