//! `cargo xtask coverage`: every attack scenario against a stack of its own, summarised as the
//! ATT&CK coverage table (the README's "Attack scenarios & coverage" shows the latest one).

use std::path::PathBuf;

use crate::attack;

#[derive(clap::Args)]
pub struct CoverageArgs {
    /// Print the table as Markdown (as pasted into README.md).
    #[arg(long)]
    pub markdown: bool,
    /// Use the binaries in this folder as they are, without setup and builds.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Runs all scenarios and prints the table. Scenarios that miss their expectations are listed
/// in the table as they are; the command itself fails only when the stack cannot run.
pub fn run(args: &CoverageArgs) -> anyhow::Result<()> {
    let all = attack::select(&["all".to_owned()])?;
    let outcomes = attack::run_on_own_stack(&all, None, args.bin_dir.clone())?;
    let detected = outcomes.iter().filter(|o| o.detected).count();
    println!(
        "\nATT&CK coverage: {detected} of {} scenarios detected\n",
        outcomes.len()
    );
    print!("{}", attack::table(&outcomes, args.markdown));
    Ok(())
}
