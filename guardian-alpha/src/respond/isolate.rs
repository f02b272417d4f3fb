//! `isolate` / `release`: drop every packet of this network namespace except loopback and the
//! cortex channel, with one nftables table `inet qsc_isolate` created and removed atomically.
//! ARP is not in the `inet` family, so the cortex stays reachable on the local link; IPv6
//! neighbour discovery is let through for the same reason.

use std::{net::SocketAddr, path::Path};

use super::{Done, RespondError, nft};

/// The nftables table that isolates the host.
pub const ISOLATE_TABLE: &str = "qsc_isolate";

/// Isolates this network namespace, keeping `cortex` (TCP) reachable.
pub fn isolate(nft_cmd: &Path, cortex: &[SocketAddr]) -> Result<Done, RespondError> {
    if cortex.is_empty() {
        return Err(RespondError::NoCortexAddress);
    }
    nft::apply(
        nft_cmd,
        &nft::replace_table(ISOLATE_TABLE, Some(&ruleset(cortex))),
    )?;
    let kept: Vec<String> = cortex.iter().map(|a| a.to_string()).collect();
    Ok(Done::new(format!(
        "host isolated: only loopback and the cortex ({}) remain reachable",
        kept.join(", ")
    ))
    .fact("table", format!("inet {ISOLATE_TABLE}"))
    .fact("cortex", kept))
}

/// Removes the isolation (nothing to do when there is none).
pub fn release(nft_cmd: &Path) -> Result<Done, RespondError> {
    nft::apply(nft_cmd, &nft::replace_table(ISOLATE_TABLE, None))?;
    Ok(Done::new("isolation released").fact("table", format!("inet {ISOLATE_TABLE}")))
}

/// Input, output and forward chains that drop everything but loopback and the cortex.
fn ruleset(cortex: &[SocketAddr]) -> String {
    let mut input = String::from("    iif \"lo\" accept\n");
    let mut output = String::from("    oif \"lo\" accept\n");
    for addr in cortex {
        let family = if addr.is_ipv4() { "ip" } else { "ip6" };
        let (ip, port) = (addr.ip(), addr.port());
        input.push_str(&format!(
            "    {family} saddr {ip} tcp sport {port} accept\n"
        ));
        output.push_str(&format!(
            "    {family} daddr {ip} tcp dport {port} accept\n"
        ));
    }
    let ndp =
        "    icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept\n";
    input.push_str(ndp);
    output.push_str(ndp);
    let chain = |name: &str, rules: &str| {
        format!(
            "  chain {name} {{\n    type filter hook {name} priority filter - 20; policy drop;\n{rules}  }}\n"
        )
    };
    chain("input", &input) + &chain("output", &output) + &chain("forward", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_keeps_loopback_and_each_cortex_address() {
        let rules = ruleset(&[
            "10.77.0.1:7443".parse().unwrap(),
            "[2001:db8::7]:7443".parse().unwrap(),
        ]);
        assert!(
            rules.contains("ip daddr 10.77.0.1 tcp dport 7443 accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip saddr 10.77.0.1 tcp sport 7443 accept"),
            "{rules}"
        );
        assert!(
            rules.contains("ip6 daddr 2001:db8::7 tcp dport 7443 accept"),
            "{rules}"
        );
        assert!(rules.contains("oif \"lo\" accept"));
        assert_eq!(rules.matches("policy drop").count(), 3);
    }

    #[test]
    fn without_a_cortex_address_isolation_is_refused_to_run() {
        assert!(matches!(
            isolate(Path::new("nft"), &[]),
            Err(RespondError::NoCortexAddress)
        ));
    }
}
