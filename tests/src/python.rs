//! The Python the tests run (`cargo xtask setup` makes it in
//! `<target>/python`, with the packages the tests import).

use std::{path::PathBuf, process::Command};

use crate::{in_ci, workspace_root};

/// A Python that can import `modules` (comma-separated, as in an `import`
/// line). Without one: under CI=true a panic, elsewhere a message and None
/// (the test returns early).
pub fn with(test: &str, modules: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        std::env::var_os("SELFOPS_PYTHON").map(PathBuf::from),
        Some(target.join("python/bin/python3")),
        Some(PathBuf::from("python3")),
    ];
    let import = format!("import {modules}");
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", &import])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(p);
        }
    }
    let why = format!("{test}: no Python that can `{import}` (run `cargo xtask setup`)");
    if in_ci() {
        panic!("{why}; CI=true, so this is a failure, not a skip");
    }
    eprintln!("SKIP {why}");
    None
}
