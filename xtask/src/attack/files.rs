//! File behaviours: credential file reads, persistence files, a tampered watched config.

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use super::{Cleanup, Expect, Scenario, Severity, cleanup::unique, process::drop_payload};
use crate::run::stack::{Stack, output_of};

/// A copy of `cat` dropped in /var/tmp reads the password hashes (a credential dumper staged
/// where payloads live).
pub const SHADOW_READ: Scenario = Scenario {
    name: "shadow-read",
    technique: "T1003.008",
    description: "/etc/shadow read by an unexpected process (a dropped copy of cat)",
    expect: Expect {
        rules: &["qsc-shadow-read", "qsc-exec-from-world-writable"],
        min_severity: Severity::Low,
        confidence: (0.2, 0.6),
        action: None,
    },
    perform: |_, cleanup| {
        let dumper = drop_payload(cleanup, Path::new("/usr/bin/cat"), "dump")?;
        output_of(Command::new(dumper).arg("/etc/shadow")).map(drop)
    },
    patience: Duration::from_secs(20),
    after_action: None,
};

/// A file in /etc/cron.d (a comment only: nothing is scheduled), removed afterwards.
pub const CRON_PERSISTENCE: Scenario = Scenario {
    name: "cron-persistence",
    technique: "T1053.003",
    description: "a cron table dropped in /etc/cron.d",
    expect: Expect {
        rules: &["qsc-cron-persistence"],
        // The file alone is LOW (packages add cron tables too); guardian-beta also reports it
        // as a new file under /etc, and once that arrives the host is MEDIUM.
        min_severity: Severity::Low,
        confidence: (0.1, 0.9),
        action: None,
    },
    perform: |_, cleanup| {
        let path = format!("/etc/cron.d/{}", unique(""));
        cleanup.path(&path);
        std::fs::write(
            &path,
            "# QSC attack scenario: persistence marker, schedules nothing; removed right away\n",
        )?;
        Ok(())
    },
    patience: Duration::from_secs(20),
    after_action: None,
};

/// An SSH key added to a fresh test account's authorized_keys.
pub const AUTHORIZED_KEYS: Scenario = Scenario {
    name: "ssh-authorized-keys",
    technique: "T1098.004",
    description: "an SSH key planted in a test account's ~/.ssh/authorized_keys",
    expect: Expect {
        rules: &["qsc-authorized-keys-write"],
        // The key alone is LOW (ssh-copy-id writes keys too); the account the scenario makes
        // for it changes /etc/passwd, which guardian-beta reports, so the host reaches MEDIUM.
        min_severity: Severity::Low,
        confidence: (0.1, 0.9),
        action: None,
    },
    perform: |_, cleanup| {
        let user = unique("k");
        cleanup.user(&user)?;
        let ssh = format!("/home/{user}/.ssh");
        std::fs::create_dir_all(&ssh)?;
        std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700))?;
        std::fs::write(
            format!("{ssh}/authorized_keys"),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJqscattackscenariokeyonlyqscatkqscatkqscatk qscatk@attack\n",
        )?;
        Ok(())
    },
    patience: Duration::from_secs(20),
    after_action: None,
};

/// The stack's demo config (in a `heal = true` tree) edited; guardian-beta restores it.
pub const CONFIG_TAMPER: Scenario = Scenario {
    name: "config-tamper",
    technique: "T1565.001",
    description: "a watched config edited and auto-healed by guardian-beta",
    expect: Expect {
        rules: &["qsc-heal-done"],
        // A healed change alone is LOW: the file is already restored (qsc-heal-done's LR).
        min_severity: Severity::Low,
        confidence: (0.1, 0.5),
        action: None,
    },
    perform: tamper_demo_config,
    patience: Duration::from_secs(30),
    after_action: None,
};

fn tamper_demo_config(stack: &mut Stack, _: &mut Cleanup) -> anyhow::Result<()> {
    let path = &stack.layout.demo_file;
    let original = std::fs::read_to_string(path)?;
    std::fs::write(
        path,
        format!("{original}listen = 0.0.0.0:4444 # attacker\n"),
    )?;
    // The heal is the detection: wait for it, so the next scenario starts from the original.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(path).is_ok_and(|now| now == original) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(path, original)?;
    anyhow::bail!("guardian-beta did not heal {} within 20 s", path.display())
}
