//! `cargo xtask bench profile`.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench profile is not built yet")
}
