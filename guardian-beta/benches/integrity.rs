//! `cargo bench -p guardian-beta --bench integrity`: guardian-beta against b3sum, AIDE and
//! openssl on one generated tree, warm cache, modes interleaved over several rounds.
//!
//! Environment: QSC_BENCH_FILES (default 20000), QSC_BENCH_BYTES (default 2000000000),
//! QSC_BENCH_ROUNDS (default 3). The tree is generated from a fixed seed under
//! `target/bench/integrity-tree` and reused while the parameters match. Missing tools are
//! installed with apt-get when running as root, otherwise their comparison is skipped.
//! Writes `target/bench/integrity.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const SEED: u64 = 0x5153_4342_4554_4131;
const DIRS: usize = 200;

struct Params {
    files: usize,
    bytes: u64,
    rounds: usize,
}

struct Paths {
    bench: PathBuf,
    tree: PathBuf,
    state: PathBuf,
    list: PathBuf,
    halves: [PathBuf; 2],
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let params = Params {
        files: env_or("QSC_BENCH_FILES", 20_000).max(2),
        bytes: env_or("QSC_BENCH_BYTES", 2_000_000_000),
        rounds: env_or("QSC_BENCH_ROUNDS", 3).max(1),
    };
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    // AIDE matches paths literally: give every tool the canonical form, without `..`.
    if let Err(e) = std::fs::create_dir_all(&bench) {
        eprintln!("cannot create {}: {e}", bench.display());
        std::process::exit(1);
    }
    let bench = bench.canonicalize().unwrap_or(bench);
    let paths = Paths {
        tree: bench.join("integrity-tree"),
        state: bench.join("integrity-state"),
        list: bench.join("integrity-files.list"),
        halves: [
            bench.join("integrity-half-0.list"),
            bench.join("integrity-half-1.list"),
        ],
        bench,
    };
    if let Err(error) = run(&params, &paths) {
        eprintln!("integrity bench failed: {error}");
        std::process::exit(1);
    }
}

fn run(params: &Params, paths: &Paths) -> Result<(), String> {
    std::fs::create_dir_all(&paths.state).map_err(|e| e.to_string())?;
    let files = generate_tree(params, paths)?;
    write_lists(&files, paths)?;
    let tools = Tools::prepare();
    let beta = Beta::new(paths)?;
    let aide = tools.aide.then(|| Aide::new(paths)).transpose()?;
    // The manifest is rewritten every run (untimed) so it always matches the current tree.
    beta.manifest(paths)?;
    println!(
        "tree: {} files, {} bytes; warm-up pass (untimed)",
        params.files, params.bytes
    );
    beta.init()?;
    let mut samples = Samples::default();
    for round in 1..=params.rounds {
        samples.init.push(beta.init()?);
        samples.check.push(beta.check()?);
        if tools.b3sum {
            samples
                .b3sum_all
                .push(time_list("b3sum", &[], &paths.list)?);
            samples
                .b3sum_halves
                .push(time_halves("b3sum", &["--num-threads", "1"], paths)?);
        }
        if let Some(aide) = &aide {
            samples.aide.push(aide.init()?);
        }
        samples.sha3.push(beta.verify_backup(paths)?);
        if tools.openssl {
            samples
                .openssl_one
                .push(time_list("openssl", &["dgst", "-sha3-256"], &paths.list)?);
            samples
                .openssl_two
                .push(time_halves("openssl", &["dgst", "-sha3-256"], paths)?);
        }
        println!("round {round}: {}", samples.last_round());
        println!("round {round} paired ratios: {}", samples.last_ratios());
    }
    let report = samples.report(params);
    report.print();
    let json = report.to_json();
    let out = paths.bench.join("integrity.json");
    std::fs::write(&out, json).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}

/// xorshift64*: fast, deterministic file contents and sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// File sizes summing to `bytes`: mostly small files and a few large ones, like /etc + /usr.
fn file_sizes(params: &Params, rng: &mut Rng) -> Vec<u64> {
    let weights: Vec<f64> = (0..params.files)
        .map(|_| {
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            u.powi(4) + 0.01
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights
        .iter()
        .map(|w| (params.bytes as f64 * w / total) as u64)
        .collect();
    let assigned: u64 = sizes.iter().sum();
    sizes[0] += params.bytes.saturating_sub(assigned);
    sizes
}

fn generate_tree(params: &Params, paths: &Paths) -> Result<Vec<PathBuf>, String> {
    let stamp = paths.bench.join("integrity-tree.params");
    let wanted = format!(
        "files={} bytes={} seed={SEED:x} v1\n",
        params.files, params.bytes
    );
    let mut rng = Rng(SEED);
    let sizes = file_sizes(params, &mut rng);
    let files: Vec<PathBuf> = (0..params.files)
        .map(|i| paths.tree.join(format!("d{:03}/f{i:06}.bin", i % DIRS)))
        .collect();
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("reusing {}", paths.tree.display());
        return Ok(files);
    }
    println!(
        "generating {} ({} files, {} bytes)",
        paths.tree.display(),
        params.files,
        params.bytes
    );
    let _ = std::fs::remove_dir_all(&paths.tree);
    let _ = std::fs::remove_file(&stamp);
    let mut buffer = vec![0u8; 1 << 20];
    for (path, size) in files.iter().zip(&sizes) {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        let mut file = std::fs::File::create(path).map_err(|e| e.to_string())?;
        let mut left = *size as usize;
        while left > 0 {
            let n = left.min(buffer.len());
            for chunk in buffer[..n].chunks_mut(8) {
                let word = rng.next().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
            file.write_all(&buffer[..n]).map_err(|e| e.to_string())?;
            left -= n;
        }
    }
    std::fs::write(&stamp, wanted).map_err(|e| e.to_string())?;
    Ok(files)
}

/// NUL-separated lists of all files and of two halves (by alternating size order, so both
/// halves hold about the same bytes).
fn write_lists(files: &[PathBuf], paths: &Paths) -> Result<(), String> {
    let join = |items: &mut dyn Iterator<Item = &PathBuf>| {
        items.fold(Vec::new(), |mut out, p| {
            out.extend_from_slice(p.as_os_str().as_encoded_bytes());
            out.push(0);
            out
        })
    };
    std::fs::write(&paths.list, join(&mut files.iter())).map_err(|e| e.to_string())?;
    let mut by_size: Vec<(u64, &PathBuf)> = files
        .iter()
        .map(|p| (std::fs::metadata(p).map(|m| m.len()).unwrap_or(0), p))
        .collect();
    by_size.sort();
    for (half, out) in paths.halves.iter().enumerate() {
        let mut items = by_size.iter().skip(half).step_by(2).map(|(_, p)| *p);
        std::fs::write(out, join(&mut items)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Tools {
    b3sum: bool,
    aide: bool,
    openssl: bool,
}

impl Tools {
    fn prepare() -> Tools {
        let wanted = [("b3sum", "b3sum"), ("aide", "aide"), ("openssl", "openssl")];
        let missing: Vec<&str> = wanted
            .iter()
            .filter(|(binary, _)| !have(binary))
            .map(|(_, package)| *package)
            .collect();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !missing.is_empty() && root {
            println!("installing {missing:?} with apt-get");
            let install = |update: bool| {
                if update {
                    let _ = Command::new("apt-get").arg("update").status();
                }
                Command::new("apt-get")
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing)
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !install(false) && !install(true) {
                println!("apt-get could not install {missing:?}");
            }
        }
        let tools = Tools {
            b3sum: have("b3sum"),
            aide: have("aide"),
            openssl: have("openssl"),
        };
        for (name, ok) in [
            ("b3sum", tools.b3sum),
            ("aide", tools.aide),
            ("openssl", tools.openssl),
        ] {
            if !ok {
                println!(
                    "skipping {name}: not installed (run as root to let the bench install it)"
                );
            }
        }
        tools
    }
}

fn have(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn timed(command: &mut Command) -> Result<f64, String> {
    let start = Instant::now();
    let status = command
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{command:?}: {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    // guardian-beta exits 1 when it reports findings, which the bench does not expect either.
    if !status.success() {
        return Err(format!("{command:?} exited with {status}"));
    }
    Ok(elapsed)
}

fn xargs(tool: &str, args: &[&str], list: &Path) -> Result<Command, String> {
    let input = std::fs::File::open(list).map_err(|e| e.to_string())?;
    let mut command = Command::new("xargs");
    command
        .args(["-0", "-s", "1000000", tool])
        .args(args)
        .stdin(input);
    Ok(command)
}

fn time_list(tool: &str, args: &[&str], list: &Path) -> Result<f64, String> {
    timed(&mut xargs(tool, args, list)?)
}

/// Two single-threaded processes over the two halves, in parallel.
fn time_halves(tool: &str, args: &[&str], paths: &Paths) -> Result<f64, String> {
    let start = Instant::now();
    let children: Vec<std::process::Child> = paths
        .halves
        .iter()
        .map(|half| {
            xargs(tool, args, half)?
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("{tool} exited with {status}"));
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

struct Beta {
    config: PathBuf,
}

impl Beta {
    fn new(paths: &Paths) -> Result<Beta, String> {
        let config = paths.state.join("beta.toml");
        let text = format!(
            "host_id = \"bench\"\nstore = \"{s}/baseline.qsb\"\nkey_file = \"{s}/beta.key\"\nheal_dir = \"{s}/heal\"\n\
             [[tree]]\npath = \"{t}\"\n",
            s = paths.state.display(),
            t = paths.tree.display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        Ok(Beta { config })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_guardian-beta"));
        command
            .arg("--config")
            .arg(&self.config)
            .args(["--format", "json"])
            .args(args)
            .env("RUST_LOG", "warn");
        command
    }

    fn init(&self) -> Result<f64, String> {
        timed(&mut self.command(&["baseline", "init", "--force"]))
    }

    fn check(&self) -> Result<f64, String> {
        timed(&mut self.command(&["baseline", "check"]))
    }

    fn manifest(&self, paths: &Paths) -> Result<(), String> {
        let manifest = paths.state.join("tree.sha3");
        let dir = paths.tree.display().to_string();
        let out = manifest.display().to_string();
        timed(&mut self.command(&["backup", "manifest", "--dir", &dir, "--manifest", &out]))
            .map(|_| ())
    }

    fn verify_backup(&self, paths: &Paths) -> Result<f64, String> {
        let dir = paths.tree.display().to_string();
        let manifest = paths.state.join("tree.sha3").display().to_string();
        timed(&mut self.command(&["backup", "verify", "--dir", &dir, "--manifest", &manifest]))
    }
}

struct Aide {
    config: PathBuf,
    database: PathBuf,
}

impl Aide {
    fn new(paths: &Paths) -> Result<Aide, String> {
        let config = paths.state.join("aide.conf");
        let database = paths.state.join("aide.db.new");
        let text = format!(
            "database_out=file:{db}\ndatabase_in=file:{db}\ngzip_dbout=no\nnum_workers=2\n\
             BENCH = p+i+n+u+g+s+m+c+xattrs+sha256\n{tree} BENCH\n",
            db = database.display(),
            tree = paths.tree.display()
        );
        std::fs::write(&config, text).map_err(|e| e.to_string())?;
        Ok(Aide { config, database })
    }

    fn init(&self) -> Result<f64, String> {
        let _ = std::fs::remove_file(&self.database);
        let mut command = Command::new("aide");
        command.arg("--config").arg(&self.config).arg("--init");
        timed(&mut command)
    }
}

#[derive(Default)]
struct Samples {
    init: Vec<f64>,
    check: Vec<f64>,
    b3sum_all: Vec<f64>,
    b3sum_halves: Vec<f64>,
    aide: Vec<f64>,
    sha3: Vec<f64>,
    openssl_one: Vec<f64>,
    openssl_two: Vec<f64>,
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied()
}

fn fmt(value: Option<f64>) -> String {
    value.map_or("n/a".into(), |v| format!("{v:.3}"))
}

impl Samples {
    fn last_round(&self) -> String {
        let last = |v: &Vec<f64>| fmt(v.last().copied());
        format!(
            "init {}s check {}s b3sum {}s b3sum-2x1 {}s aide {}s beta-sha3 {}s openssl-1 {}s openssl-2 {}s",
            last(&self.init),
            last(&self.check),
            last(&self.b3sum_all),
            last(&self.b3sum_halves),
            last(&self.aide),
            last(&self.sha3),
            last(&self.openssl_one),
            last(&self.openssl_two)
        )
    }

    /// Ratios within each round: both sides measured back to back on the same warm cache.
    fn paired(&self, slow: &[f64], fast: &[f64]) -> Vec<f64> {
        slow.iter().zip(fast).map(|(s, f)| s / f).collect()
    }

    fn b3sum_best(&self) -> Vec<f64> {
        if self.b3sum_halves.is_empty() {
            return self.b3sum_all.clone();
        }
        self.b3sum_all
            .iter()
            .zip(&self.b3sum_halves)
            .map(|(a, b)| a.min(*b))
            .collect()
    }

    fn ratios(&self) -> Ratios {
        Ratios {
            aide_over_init: self.paired(&self.aide, &self.init),
            init_over_b3sum: self.paired(&self.init, &self.b3sum_best()),
            sha3_over_openssl: self.paired(&self.openssl_two, &self.sha3),
        }
    }

    fn last_ratios(&self) -> String {
        let ratios = self.ratios();
        let last = |v: &Vec<f64>| fmt(v.last().copied());
        format!(
            "aide/beta-init {}x  beta-init/b3sum-best {}x  beta-sha3/openssl-2 {}x",
            last(&ratios.aide_over_init),
            last(&ratios.init_over_b3sum),
            last(&ratios.sha3_over_openssl)
        )
    }

    fn report(&self, params: &Params) -> Report {
        let mb = params.bytes as f64 / 1e6;
        let b3sum = match (median(&self.b3sum_all), median(&self.b3sum_halves)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Report {
            files: params.files,
            bytes: params.bytes,
            rounds: self.init.len(),
            init_s: median(&self.init).unwrap_or(f64::NAN),
            check_s: median(&self.check).unwrap_or(f64::NAN),
            aide_init_s: median(&self.aide),
            b3sum_s: b3sum,
            b3sum_single_process_s: median(&self.b3sum_all),
            b3sum_two_processes_s: median(&self.b3sum_halves),
            sha3_mb_per_s: median(&self.sha3).map_or(f64::NAN, |s| mb / s),
            openssl_sha3_mb_per_s: median(&self.openssl_two).map(|s| mb / s),
            openssl_sha3_one_core_mb_per_s: median(&self.openssl_one).map(|s| mb / s),
            ratios: self.ratios(),
        }
    }
}

struct Ratios {
    aide_over_init: Vec<f64>,
    init_over_b3sum: Vec<f64>,
    sha3_over_openssl: Vec<f64>,
}

struct Report {
    files: usize,
    bytes: u64,
    rounds: usize,
    init_s: f64,
    check_s: f64,
    aide_init_s: Option<f64>,
    b3sum_s: Option<f64>,
    b3sum_single_process_s: Option<f64>,
    b3sum_two_processes_s: Option<f64>,
    sha3_mb_per_s: f64,
    openssl_sha3_mb_per_s: Option<f64>,
    openssl_sha3_one_core_mb_per_s: Option<f64>,
    ratios: Ratios,
}

impl Report {
    fn print(&self) {
        let mb = self.bytes as f64 / 1e6;
        println!(
            "== integrity bench: {} files, {:.0} MB, median of {} rounds ==",
            self.files, mb, self.rounds
        );
        println!(
            "guardian-beta init   {:.3}s  {:.0} files/s  {:.0} MB/s",
            self.init_s,
            self.files as f64 / self.init_s,
            mb / self.init_s
        );
        println!(
            "guardian-beta check  {:.3}s  {:.3}s per 10,000 files (metadata-first)",
            self.check_s,
            self.check_s * 10_000.0 / self.files as f64
        );
        if let Some(aide) = self.aide_init_s {
            println!(
                "aide --init (sha256, 2 workers) {aide:.3}s  paired ratio aide/beta = {}x (target >= 5)",
                fmt(median(&self.ratios.aide_over_init))
            );
        }
        if let Some(b3sum) = self.b3sum_s {
            println!(
                "b3sum best {b3sum:.3}s (one process {}, two --num-threads 1 {})  paired ratio beta/b3sum = {}x (target <= 1.5)",
                fmt(self.b3sum_single_process_s),
                fmt(self.b3sum_two_processes_s),
                fmt(median(&self.ratios.init_over_b3sum))
            );
        }
        println!(
            "guardian-beta backup verify SHA3-256  {:.0} MB/s (target >= 500)",
            self.sha3_mb_per_s
        );
        if let Some(openssl) = self.openssl_sha3_mb_per_s {
            println!(
                "openssl dgst -sha3-256 two processes {openssl:.0} MB/s (one process {} MB/s)  paired ratio beta/openssl = {}x",
                fmt(self.openssl_sha3_one_core_mb_per_s),
                fmt(median(&self.ratios.sha3_over_openssl))
            );
        }
    }

    fn to_json(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.4}"));
        format!(
            "{{\n  \"files\": {},\n  \"bytes\": {},\n  \"rounds\": {},\n  \"init_s\": {:.4},\n  \"check_s\": {:.4},\n  \
             \"aide_init_s\": {},\n  \"b3sum_s\": {},\n  \"b3sum_single_process_s\": {},\n  \"b3sum_two_processes_s\": {},\n  \
             \"sha3_mb_per_s\": {:.1},\n  \"openssl_sha3_mb_per_s\": {},\n  \"openssl_sha3_one_core_mb_per_s\": {},\n  \
             \"init_files_per_s\": {:.0},\n  \"init_mb_per_s\": {:.1},\n  \"check_s_per_10000_files\": {:.4},\n  \
             \"ratio_aide_over_init\": {},\n  \"ratio_init_over_b3sum\": {},\n  \"ratio_sha3_over_openssl\": {}\n}}\n",
            self.files,
            self.bytes,
            self.rounds,
            self.init_s,
            self.check_s,
            opt(self.aide_init_s),
            opt(self.b3sum_s),
            opt(self.b3sum_single_process_s),
            opt(self.b3sum_two_processes_s),
            self.sha3_mb_per_s,
            opt(self.openssl_sha3_mb_per_s),
            opt(self.openssl_sha3_one_core_mb_per_s),
            self.files as f64 / self.init_s,
            self.bytes as f64 / 1e6 / self.init_s,
            self.check_s * 10_000.0 / self.files as f64,
            opt(median(&self.ratios.aide_over_init)),
            opt(median(&self.ratios.init_over_b3sum)),
            opt(median(&self.ratios.sha3_over_openssl)),
        )
    }
}
