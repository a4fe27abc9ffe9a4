//! `cargo xtask bench xdp`.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench xdp is not built yet")
}
