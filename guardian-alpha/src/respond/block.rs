//! `block_ip` / `unblock_ip`: through the sensor's kernel map (the cgroup connect/sendmsg
//! programs refuse the address with EPERM), or, when those programs are not attached, through
//! an nftables table `inet qsc_block` that rejects packets to the blocked addresses.

use std::{collections::BTreeSet, net::IpAddr, path::PathBuf};

use super::{RespondError, guardrails::canonical, nft};
use crate::sensor::SharedSensor;

/// The nftables table of the fallback.
pub const BLOCK_TABLE: &str = "qsc_block";

/// Where blocks are enforced.
pub enum IpBlocker {
    /// The sensor's BLOCKED_V4/BLOCKED_V6 maps, read by the cgroup programs.
    Kernel(SharedSensor),
    /// The fallback: the agent keeps the set and rewrites the table on each change.
    Nft {
        nft: PathBuf,
        blocked: BTreeSet<IpAddr>,
    },
}

impl IpBlocker {
    /// The kernel map when `sensor` has its address-blocking programs attached, else nftables.
    pub fn new(sensor: Option<SharedSensor>, nft: PathBuf) -> Self {
        let attached = sensor.as_ref().is_some_and(|s| {
            s.lock()
                .map(|sensor| sensor.blocks_addresses())
                .unwrap_or(false)
        });
        match sensor {
            Some(sensor) if attached => IpBlocker::Kernel(sensor),
            _ => IpBlocker::Nft {
                nft,
                blocked: BTreeSet::new(),
            },
        }
    }

    /// `kernel` or `nftables`: how blocks are enforced.
    pub fn mechanism(&self) -> &'static str {
        match self {
            IpBlocker::Kernel(_) => "kernel",
            IpBlocker::Nft { .. } => "nftables",
        }
    }

    /// Blocks `addr` (IPv4-mapped IPv6 as its IPv4 address); blocking it again is a no-op.
    pub fn block(&mut self, addr: IpAddr) -> Result<(), RespondError> {
        let addr = canonical(addr);
        match self {
            IpBlocker::Kernel(sensor) => Ok(sensor
                .lock()
                .map_err(|_| RespondError::SensorPoisoned)?
                .block_ip(addr)?),
            IpBlocker::Nft { nft, blocked } => {
                let mut next = blocked.clone();
                next.insert(addr);
                nft::apply(nft, &table_script(&next))?;
                *blocked = next;
                Ok(())
            }
        }
    }

    /// Removes the block on `addr`; unblocking an address that is not blocked is a no-op.
    pub fn unblock(&mut self, addr: IpAddr) -> Result<(), RespondError> {
        let addr = canonical(addr);
        match self {
            IpBlocker::Kernel(sensor) => Ok(sensor
                .lock()
                .map_err(|_| RespondError::SensorPoisoned)?
                .unblock_ip(addr)?),
            IpBlocker::Nft { nft, blocked } => {
                let mut next = blocked.clone();
                next.remove(&addr);
                nft::apply(nft, &table_script(&next))?;
                *blocked = next;
                Ok(())
            }
        }
    }
}

/// The whole fallback table for `blocked` (removed when empty).
fn table_script(blocked: &BTreeSet<IpAddr>) -> String {
    if blocked.is_empty() {
        return nft::replace_table(BLOCK_TABLE, None);
    }
    let list = |v4: bool| {
        blocked
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut body = String::from(
        "  chain output {\n    type filter hook output priority filter - 10; policy accept;\n",
    );
    for (family, v4) in [("ip", true), ("ip6", false)] {
        let addrs = list(v4);
        if !addrs.is_empty() {
            body.push_str(&format!("    {family} daddr {{ {addrs} }} reject\n"));
        }
    }
    body.push_str("  }\n");
    nft::replace_table(BLOCK_TABLE, Some(&body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_table_lists_both_families_and_goes_away_when_empty() {
        let mut set: BTreeSet<IpAddr> = ["127.0.0.2", "2001:db8::1", "127.0.0.3"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let script = table_script(&set);
        assert!(
            script.contains("ip daddr { 127.0.0.2, 127.0.0.3 } reject"),
            "{script}"
        );
        assert!(
            script.contains("ip6 daddr { 2001:db8::1 } reject"),
            "{script}"
        );
        set.clear();
        assert_eq!(table_script(&set), nft::replace_table(BLOCK_TABLE, None));
    }

    #[test]
    fn without_a_sensor_nftables_is_used() {
        let blocker = IpBlocker::new(None, "nft".into());
        assert_eq!(blocker.mechanism(), "nftables");
    }
}
