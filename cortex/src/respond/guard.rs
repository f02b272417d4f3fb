//! Guardrails the cortex applies before any action leaves it: never pid 1, never the cortex or
//! an agent, never an allow-listed process, user or address, and at most so many actions per
//! host per minute. (The agent applies its own guardrails again on the host.)

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use qsc_event::Action;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::config::AllowConfig;
use super::playbook::Target;

/// Process names of QSC's own programs, never acted on whatever the allow-list says.
pub const PROTECTED_PROCESSES: [&str; 3] = ["guardian-alpha", "guardian-beta", "cortex"];

/// Window of the per-host rate limit.
const RATE_WINDOW_NS: u64 = 60_000_000_000;

/// An address block: an IP address and a prefix length (`10.0.0.0/8`, `::1/128`, `192.0.2.7`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}` is not an address or CIDR block: {reason}")]
pub struct CidrError {
    text: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason| CidrError {
            text: text.to_owned(),
            reason,
        };
        let (addr_text, prefix_text) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| fail("bad IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => p.parse::<u8>().map_err(|_| fail("bad prefix length"))?,
        };
        if prefix > max {
            return Err(fail("prefix length too long for the address family"));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    /// Whether `ip` is inside the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(u32::from(net)),
                u128::from(u32::from(ip)),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = u32::from(bits - prefix);
    (a >> shift) == (b >> shift)
}

/// Why the cortex refused an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("pid 1 (init) is never killed")]
    Init,
    #[error("pid {pid} is the cortex itself")]
    Cortex { pid: u32 },
    #[error("process `{name}` is a QSC agent or the cortex")]
    QscProcess { name: String },
    #[error("process `{name}` is on the [respond.allow] processes list")]
    AllowedProcess { name: String },
    #[error("user `{user}` is on the [respond.allow] users list")]
    AllowedUser { user: String },
    #[error("address {addr} is inside allow-listed {block}")]
    AllowedAddress { addr: IpAddr, block: Cidr },
    #[error("address {addr} is the cortex's own channel address")]
    CortexAddress { addr: IpAddr },
    #[error("host {host} already had {limit} actions in the last minute")]
    RateLimited { host: String, limit: u32 },
}

/// The cortex-side guardrails.
pub struct Guardrails {
    allow: AllowConfig,
    cortex_pid: u32,
    /// The cortex's channel address, when it is a specific one.
    cortex_addr: Option<IpAddr>,
    max_per_minute: u32,
    recent: HashMap<String, VecDeque<u64>>,
}

impl Guardrails {
    /// `cortex_addr` is the channel listener's IP (ignored when unspecified).
    pub fn new(allow: AllowConfig, max_per_minute: u32, cortex_addr: Option<IpAddr>) -> Self {
        Guardrails {
            allow,
            cortex_pid: std::process::id(),
            cortex_addr: cortex_addr.filter(|a| !a.is_unspecified()),
            max_per_minute,
            recent: HashMap::new(),
        }
    }

    /// Checks what the action would touch; `target` is what the playbook resolved it from.
    pub fn check(&self, action: &Action, target: &Target) -> Result<(), Refusal> {
        match action {
            Action::Kill { pid, .. } => self.check_process(*pid, target),
            Action::Quarantine { .. } => match &target.process {
                Some(process) => self.check_names(&process.comm, process.exe.as_deref()),
                None => Ok(()),
            },
            Action::BlockIp { addr, .. } => self.check_address(*addr),
            Action::RevokeCredential { user } => self.check_user(user),
            _ => Ok(()),
        }
    }

    fn check_process(&self, pid: u32, target: &Target) -> Result<(), Refusal> {
        if pid == 1 {
            return Err(Refusal::Init);
        }
        if pid == self.cortex_pid {
            return Err(Refusal::Cortex { pid });
        }
        if let Some(process) = &target.process {
            self.check_names(&process.comm, process.exe.as_deref())?;
            if let Some(user) = &process.user {
                self.check_user(user)?;
            }
        }
        Ok(())
    }

    fn check_names(&self, comm: &str, exe: Option<&str>) -> Result<(), Refusal> {
        let exe_name = exe.and_then(|e| e.rsplit('/').next());
        for name in [Some(comm), exe_name].into_iter().flatten() {
            if PROTECTED_PROCESSES.contains(&name) {
                return Err(Refusal::QscProcess { name: name.into() });
            }
        }
        for listed in &self.allow.processes {
            if listed == comm || Some(listed.as_str()) == exe {
                return Err(Refusal::AllowedProcess {
                    name: listed.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_user(&self, user: &str) -> Result<(), Refusal> {
        if self.allow.users.iter().any(|u| u == user) {
            return Err(Refusal::AllowedUser { user: user.into() });
        }
        Ok(())
    }

    fn check_address(&self, addr: IpAddr) -> Result<(), Refusal> {
        if self.cortex_addr == Some(addr) {
            return Err(Refusal::CortexAddress { addr });
        }
        match self.allow.addresses.iter().find(|b| b.contains(addr)) {
            Some(block) => Err(Refusal::AllowedAddress {
                addr,
                block: *block,
            }),
            None => Ok(()),
        }
    }

    /// Counts one action on `host` at `now_ns`, or refuses it when the last minute is full.
    pub fn take_rate(&mut self, host: &str, now_ns: u64) -> Result<(), Refusal> {
        let window = self.recent.entry(host.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now_ns.saturating_sub(*t) >= RATE_WINDOW_NS)
        {
            window.pop_front();
        }
        if window.len() >= self.max_per_minute as usize {
            return Err(Refusal::RateLimited {
                host: host.to_owned(),
                limit: self.max_per_minute,
            });
        }
        window.push_back(now_ns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use qsc_event::ProcessInfo;

    use super::*;

    fn process(pid: u32, comm: &str, user: &str) -> Target {
        Target {
            process: Some(ProcessInfo {
                pid,
                comm: comm.into(),
                exe: Some(format!("/usr/bin/{comm}").into()),
                user: Some(user.into()),
                ..ProcessInfo::default()
            }),
            ..Target::default()
        }
    }

    fn kill(pid: u32) -> Action {
        Action::Kill {
            pid,
            start_time_ticks: None,
            tree: false,
        }
    }

    fn guard() -> Guardrails {
        let allow = AllowConfig {
            processes: vec!["sshd".into(), "/opt/app/bin/server".into()],
            users: vec!["root".into()],
            addresses: vec!["10.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()],
        };
        Guardrails::new(allow, 3, Some("192.0.2.1".parse().unwrap()))
    }

    #[test]
    fn cidr_blocks_parse_and_match() {
        let block: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(block.contains("10.1.200.3".parse().unwrap()));
        assert!(!block.contains("10.2.0.1".parse().unwrap()));
        assert!(block.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!block.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.5".parse().unwrap()));
        let host: Cidr = "2001:db8::1".parse().unwrap();
        assert_eq!(host.to_string(), "2001:db8::1/128");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn init_the_cortex_and_the_agents_are_never_killed() {
        let g = guard();
        let plain = process(4242, "nc", "mallory");
        assert_eq!(g.check(&kill(1), &plain), Err(Refusal::Init));
        let me = std::process::id();
        assert_eq!(g.check(&kill(me), &plain), Err(Refusal::Cortex { pid: me }));
        let agent = process(777, "guardian-alpha", "qsc");
        assert!(matches!(
            g.check(&kill(777), &agent),
            Err(Refusal::QscProcess { .. })
        ));
        assert_eq!(g.check(&kill(4242), &plain), Ok(()));
    }

    #[test]
    fn allow_lists_protect_processes_users_and_addresses() {
        let g = guard();
        assert!(matches!(
            g.check(&kill(50), &process(50, "sshd", "mallory")),
            Err(Refusal::AllowedProcess { .. })
        ));
        let mut by_exe = process(51, "server", "app");
        if let Some(p) = by_exe.process.as_mut() {
            p.exe = Some("/opt/app/bin/server".into());
        }
        assert!(matches!(
            g.check(&kill(51), &by_exe),
            Err(Refusal::AllowedProcess { .. })
        ));
        assert!(matches!(
            g.check(&kill(52), &process(52, "bash", "root")),
            Err(Refusal::AllowedUser { .. })
        ));
        let revoke_root = Action::RevokeCredential {
            user: "root".into(),
        };
        assert!(g.check(&revoke_root, &Target::default()).is_err());
        let block = |addr: &str| Action::BlockIp {
            addr: addr.parse().unwrap(),
            ttl_s: 60,
        };
        assert!(matches!(
            g.check(&block("10.9.8.7"), &Target::default()),
            Err(Refusal::AllowedAddress { .. })
        ));
        assert!(matches!(
            g.check(&block("192.0.2.1"), &Target::default()),
            Err(Refusal::CortexAddress { .. })
        ));
        assert!(g.check(&block("::1"), &Target::default()).is_err());
        assert_eq!(g.check(&block("203.0.113.9"), &Target::default()), Ok(()));
    }

    #[test]
    fn the_rate_limit_is_per_host_and_slides() {
        let mut g = guard();
        let second = 1_000_000_000;
        for i in 0..3 {
            assert_eq!(g.take_rate("web-01", i * second), Ok(()));
        }
        assert!(matches!(
            g.take_rate("web-01", 10 * second),
            Err(Refusal::RateLimited { limit: 3, .. })
        ));
        assert_eq!(g.take_rate("web-02", 10 * second), Ok(()));
        // The first action leaves the window 60 s after it was taken.
        assert_eq!(g.take_rate("web-01", 60 * second), Ok(()));
        assert!(g.take_rate("web-01", 60 * second + 1).is_err());
    }
}
