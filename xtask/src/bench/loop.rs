//! `cargo xtask bench loop`.

pub fn run() -> anyhow::Result<()> {
    anyhow::bail!("bench loop is not built yet")
}
