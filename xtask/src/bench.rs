//! `cargo xtask bench NAME`: each benchmark compares against its named baseline in one run and
//! writes target/bench/NAME.json.

use anyhow::bail;

use crate::shell;

mod host_cpu;
mod response;
mod scale;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Which benchmark (see the table below).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(BENCHES.iter().map(|b| b.name)))]
    pub name: String,
}

struct Bench {
    name: &'static str,
    package: &'static str,
    target: &'static str,
}

/// Each benchmark, the package and `cargo bench` target that implements it.
const BENCHES: &[Bench] = &[
    // guardian-alpha vs bare vs bpftrace on openat, exec and connect workloads.
    Bench {
        name: "capture",
        package: "qsc-tests",
        target: "capture",
    },
    // Channel handshake latency and throughput vs plain TCP.
    Bench {
        name: "channel",
        package: "qsc-channel",
        target: "channel",
    },
    // guardian-beta baseline/check vs b3sum, openssl and AIDE.
    Bench {
        name: "integrity",
        package: "guardian-beta",
        target: "integrity",
    },
    // Sigma engine throughput vs JSON decoding.
    Bench {
        name: "detect",
        package: "cortex",
        target: "detect",
    },
    // Encrypted store: batched vs per-event commits.
    Bench {
        name: "store",
        package: "cortex",
        target: "store",
    },
    // The cortex pipeline (ingest+store+detect+score) vs decode-only and store-only baselines.
    Bench {
        name: "cortex",
        package: "cortex",
        target: "pipeline",
    },
    // Isolation Forest training and scoring vs a z-score baseline.
    Bench {
        name: "anomaly",
        package: "cortex",
        target: "anomaly",
    },
    // Response actions end to end (kernel event → agent done) on the real stack, vs the seed
    // budgets; implemented in xtask itself (bench/response.rs), not as a `cargo bench` target.
    Bench {
        name: "response",
        package: "xtask",
        target: "response",
    },
    // The cortex on NATS JetStream + PostgreSQL with 1 and 3 replicas, interleaved rounds;
    // implemented in xtask itself (bench/scale.rs).
    Bench {
        name: "scale",
        package: "xtask",
        target: "scale",
    },
];

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let Some(bench) = BENCHES.iter().find(|b| b.name == args.name) else {
        bail!("unknown benchmark `{}`", args.name);
    };
    if args.name == "response" {
        return response::run();
    }
    if args.name == "scale" {
        return scale::run();
    }
    let (package, bench) = (bench.package, bench.target);
    if args.name == "capture" {
        crate::ebpf::build_release()?;
    }
    std::fs::create_dir_all(shell::target_dir().join("bench"))?;
    shell::run(shell::cargo().args(["bench", "-p", package, "--bench", bench]))
}
