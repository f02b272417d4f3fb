//! `cargo xtask coverage`: every attack scenario, each on a fresh stack of its own (or all on
//! one with `--sequence`), summarised as the ATT&CK coverage table (the README's "Attack
//! scenarios & coverage" shows the latest one).

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
    /// Run the scenarios one after the other on one stack, where the host's incident
    /// accumulates their evidence, instead of each alone on a fresh stack.
    #[arg(long)]
    pub sequence: bool,
}

/// Runs all scenarios and prints the table. Scenarios that miss their expectations are listed
/// in the table as they are; the command itself fails only when the stack cannot run.
pub fn run(args: &CoverageArgs) -> anyhow::Result<()> {
    let all = attack::select(&["all".to_owned()])?;
    let bin = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => crate::run::prepare()?,
    };
    let outcomes = if args.sequence {
        attack::run_on_own_stack(&all, None, bin)?
    } else {
        attack::run_isolated(&all, None, &bin)?
    };
    let detected = outcomes.iter().filter(|o| o.detected).count();
    println!(
        "\nATT&CK coverage: {detected} of {} scenarios detected ({})\n",
        outcomes.len(),
        if args.sequence {
            "one after the other on one stack"
        } else {
            "each alone on a fresh stack"
        }
    );
    print!("{}", attack::table(&outcomes, args.markdown));
    Ok(())
}
