//! Tampering with the stack's own guardian-alpha: a signal it survives and a ptrace attempt.

use std::{process::Command, time::Duration};

use anyhow::Context;

use super::{Expect, Scenario, Severity, actor, would_run};
use crate::run::stack::output_of;

/// SIGCONT (harmless to a running process, still a signal the kernel hook reports) and a
/// PTRACE_ATTACH + detach, both against the stack's own guardian-alpha.
pub const AGENT_TAMPER: Scenario = Scenario {
    name: "agent-tamper",
    technique: "T1562.001",
    description: "signalling and tracing the stack's guardian-alpha",
    expect: Expect {
        rules: &["qsc-agent-tamper", "qsc-ptrace-attach"],
        min_severity: Severity::Critical,
        confidence: (0.99, 1.0),
        action: would_run("rotate_keys"),
    },
    perform: |stack, _| {
        let agent = stack
            .pid("guardian-alpha")
            .context("the stack has no guardian-alpha")?
            .to_string();
        let sigcont = libc::SIGCONT.to_string();
        output_of(Command::new(actor(stack)).args(["kill", &agent, &sigcont]))?;
        output_of(Command::new(actor(stack)).args(["ptrace-attach", &agent]))?;
        Ok(())
    },
    patience: Duration::from_secs(20),
    after_action: None,
};
