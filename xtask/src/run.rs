//! `cargo xtask run`: the whole stack on this host.

#[derive(clap::Args)]
pub struct RunArgs {}

pub fn run(_args: &RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
