//! A network namespace joined to the caller's namespace by a veth pair: a "host" whose traffic
//! can be cut (isolated, blocked) without touching the machine's own network. Used by the
//! end-to-end response tests and `cargo xtask bench response`. Removed (with the pair and any
//! nftables tables inside) when dropped.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

/// Names and addresses of one namespace and its veth pair; pick ones no other user of the
/// machine uses (names are global, the /24 must be unused).
#[derive(Clone, Debug)]
pub struct NetnsSpec {
    /// The namespace's name (`ip netns`).
    pub name: String,
    /// The veth end left in the caller's namespace (at most 15 characters).
    pub veth_outside: String,
    /// The veth end moved into the namespace (at most 15 characters).
    pub veth_inside: String,
    /// The caller's side address (the "peer": the cortex and peer services listen there).
    pub outside_ip: String,
    /// The namespace's address, in the same /24 as `outside_ip`.
    pub inside_ip: String,
}

/// A created namespace; deleted (with its veth pair) on drop.
#[derive(Debug)]
pub struct Netns {
    pub spec: NetnsSpec,
}

impl Netns {
    /// Creates the namespace, the pair, both addresses and loopback, first removing what an
    /// interrupted earlier run left under the same names.
    pub fn create(spec: NetnsSpec) -> anyhow::Result<Self> {
        remove(&spec);
        let netns = Netns { spec };
        let s = &netns.spec;
        let outside = format!("{}/24", s.outside_ip);
        let inside = format!("{}/24", s.inside_ip);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &s.name],
            &[
                "link",
                "add",
                &s.veth_outside,
                "type",
                "veth",
                "peer",
                "name",
                &s.veth_inside,
                "netns",
                &s.name,
            ],
            &["addr", "add", &outside, "dev", &s.veth_outside],
            &["link", "set", &s.veth_outside, "up"],
            &["-n", &s.name, "addr", "add", &inside, "dev", &s.veth_inside],
            &["-n", &s.name, "link", "set", &s.veth_inside, "up"],
            &["-n", &s.name, "link", "set", "lo", "up"],
        ];
        for args in steps {
            ip(args)?;
        }
        Ok(netns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.spec.name])
            .arg(program);
        command
    }

    /// True when a TCP connect from inside the namespace to `ip:port` succeeds within 1 s.
    pub fn can_connect(&self, ip: &str, port: u16) -> bool {
        self.command("timeout")
            .args(["1", "bash", "-c"])
            .arg(format!("exec 3<>/dev/tcp/{ip}/{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.spec);
    }
}

/// Deletes the pair and the namespace (deleting the namespace drops its nftables tables).
fn remove(spec: &NetnsSpec) {
    for args in [
        ["link", "del", spec.veth_outside.as_str()],
        ["netns", "del", spec.name.as_str()],
    ] {
        let _ = Command::new("ip")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run `ip` (iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
