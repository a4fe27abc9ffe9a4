//! ONNX models for the tests, made at test time with Python's `onnx`
//! package (`cargo xtask setup` installs it in `<target>/python`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::workspace_root;

/// A Python with `onnx` and `onnxruntime`. Without one: under CI=true a
/// panic, elsewhere a message and None (the test returns early).
pub fn python(test: &str) -> Option<PathBuf> {
    crate::python::with(test, "onnx, onnxruntime")
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
