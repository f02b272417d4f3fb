//! guardian-beta's findings: a damaged backup, an expiring and a revoked certificate. The
//! certificates come from a CA the scenario makes with openssl in the stack's state folder.

use std::{path::Path, process::Command, time::Duration};

use anyhow::bail;

use super::{Cleanup, Expect, Scenario, Severity};
use crate::run::stack::{Stack, output_of};

/// A backup set given a manifest while good, then damaged, then verified.
pub const BACKUP_TAMPER: Scenario = Scenario {
    name: "backup-tamper",
    technique: "T1490",
    description: "a file of a verified backup set overwritten (ransomware-style)",
    expect: Expect {
        rules: &["qsc-backup-damaged"],
        // A damaged backup alone is MEDIUM: disks rot too (qsc-backup-damaged's LR).
        min_severity: Severity::Medium,
        confidence: (0.5, 1.0),
        action: None,
    },
    perform: backup_tamper,
    patience: Duration::from_secs(20),
    after_action: None,
};

fn backup_tamper(stack: &mut Stack, cleanup: &mut Cleanup) -> anyhow::Result<()> {
    let layout = &stack.layout;
    let file = layout.backup_dir.join("customers.dump");
    cleanup.path(&file);
    std::fs::write(&file, "id,name\n1,alice\n2,bob\n".repeat(1000))?;
    let manifest = layout.backup_manifest.display().to_string();
    let dir = layout.backup_dir.display().to_string();
    output_of(&mut stack.beta_command(&format!(
        "backup manifest --dir {dir} --manifest {manifest}"
    )))?;
    std::fs::write(&file, "YOUR FILES ARE ENCRYPTED (QSC attack scenario)\n")?;
    stack.with_beta_paused(|stack| beta_findings(stack.beta_command("backup verify")))
}

/// Runs a one-shot guardian-beta check that must report findings (exit status 1).
fn beta_findings(mut cmd: Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    match out.status.code() {
        Some(1) => Ok(()),
        _ => bail!(
            "guardian-beta reported no finding ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

/// A certificate of the scenario's CA that expires in five days (warning period: 30).
pub const CERT_EXPIRING: Scenario = Scenario {
    name: "cert-expiring",
    technique: "T1499",
    description: "a watched certificate five days before it expires",
    expect: Expect {
        rules: &["qsc-cert-expiring"],
        // An expiring certificate is an outage to come, not an attack: LOW alone.
        min_severity: Severity::Low,
        confidence: (0.1, 0.5),
        action: None,
    },
    perform: |stack, cleanup| check_certificate(stack, cleanup, false),
    patience: Duration::from_secs(20),
    after_action: None,
};

/// A certificate of the scenario's CA that the CA's CRL revokes.
pub const CERT_REVOKED: Scenario = Scenario {
    name: "cert-revoked",
    technique: "T1553.004",
    description: "a watched certificate revoked by its CA's CRL",
    expect: Expect {
        rules: &["qsc-cert-untrusted"],
        // A revoked certificate in use alone is MEDIUM (qsc-cert-untrusted's LR).
        min_severity: Severity::Medium,
        confidence: (0.5, 1.0),
        action: None,
    },
    perform: |stack, cleanup| check_certificate(stack, cleanup, true),
    patience: Duration::from_secs(20),
    after_action: None,
};

fn check_certificate(stack: &mut Stack, cleanup: &mut Cleanup, revoke: bool) -> anyhow::Result<()> {
    let dir = stack
        .layout
        .cert_dir
        .join(if revoke { "revoked" } else { "expiring" });
    cleanup.path(&dir);
    std::fs::create_dir_all(&dir)?;
    let ca = TestCa::create(&dir)?;
    let leaf = ca.issue("qscatk.test", if revoke { 90 } else { 5 })?;
    let mut args = format!(
        "cert --file {} --ca-bundle {} --warn-days 30",
        leaf,
        ca.dir.join("ca.pem").display()
    );
    if revoke {
        args.push_str(&format!(" --crl {}", ca.revoke(&leaf)?));
    }
    stack.with_beta_paused(|stack| beta_findings(stack.beta_command(&args)))
}

/// A throw-away certificate authority in a folder (openssl).
struct TestCa<'a> {
    dir: &'a Path,
}

impl<'a> TestCa<'a> {
    fn create(dir: &'a Path) -> anyhow::Result<Self> {
        let d = dir.display();
        std::fs::write(dir.join("index.txt"), "")?;
        std::fs::write(dir.join("crlnumber"), "01\n")?;
        std::fs::write(
            dir.join("ca.cnf"),
            format!(
                "[ca]\ndefault_ca = qsc\n[qsc]\ndatabase = {d}/index.txt\ncrlnumber = {d}/crlnumber\n\
                 default_md = sha256\ndefault_crl_days = 7\ncertificate = {d}/ca.pem\nprivate_key = {d}/ca.key\n\
                 [leaf]\nbasicConstraints = CA:FALSE\nsubjectAltName = DNS:qscatk.test\nkeyUsage = digitalSignature\nextendedKeyUsage = serverAuth\n"
            ),
        )?;
        openssl(&format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/ca.key \
             -out {d}/ca.pem -days 365 -subj /CN=qscatk-test-ca"
        ))?;
        Ok(TestCa { dir })
    }

    /// A leaf for `name` valid for `days`; returns its PEM path.
    fn issue(&self, name: &str, days: u32) -> anyhow::Result<String> {
        let d = self.dir.display();
        openssl(&format!(
            "req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {d}/leaf.key \
             -out {d}/leaf.csr -subj /CN={name}"
        ))?;
        openssl(&format!(
            "x509 -req -in {d}/leaf.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial \
             -days {days} -extfile {d}/ca.cnf -extensions leaf -out {d}/leaf.pem"
        ))?;
        Ok(format!("{d}/leaf.pem"))
    }

    /// Revokes `leaf` and writes the CRL; returns its path.
    fn revoke(&self, leaf: &str) -> anyhow::Result<String> {
        let d = self.dir.display();
        openssl(&format!("ca -config {d}/ca.cnf -revoke {leaf}"))?;
        openssl(&format!("ca -config {d}/ca.cnf -gencrl -out {d}/crl.pem"))?;
        Ok(format!("{d}/crl.pem"))
    }
}

fn openssl(args: &str) -> anyhow::Result<()> {
    output_of(Command::new("openssl").args(args.split_whitespace())).map(drop)
}
