//! The destination guard: the cortex contacts only configured origins, and only at addresses
//! it has checked.
//!
//! A URL passes when its scheme, host and port equal those of a configured destination. Its
//! host is then resolved here, the addresses are filtered (the destination's `addresses` list,
//! or for a DNS name without one: globally routable addresses only), and the HTTP client is
//! handed exactly those addresses, so a second, different DNS answer cannot redirect the
//! connection (DNS rebinding). Redirects are never followed (see the worker).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use thiserror::Error;
use url::{Host, Url};

use super::config::Destination;

/// Why the guard refused to contact a URL.
#[derive(Debug, Error)]
pub enum GuardError {
    #[error("`{url}` matches no configured destination (scheme, host and port)")]
    NotAllowed { url: String },
    #[error("`{url}` has no host or port")]
    NoOrigin { url: String },
    #[error("`{host}` resolved only to addresses outside its allow-list: {addrs:?}")]
    AddressRefused { host: String, addrs: Vec<IpAddr> },
    #[error("resolving `{host}` failed: {source}")]
    Resolve { host: String, source: io::Error },
}

impl GuardError {
    /// Whether this is a refusal (never retried) rather than a passing resolution failure.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, GuardError::Resolve { .. })
    }
}

/// One allowed scheme/host/port with its address policy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: Host<String>,
    port: u16,
    addresses: Vec<IpAddr>,
}

impl Origin {
    fn of(url: &Url) -> Option<(String, Host<String>, u16)> {
        Some((
            url.scheme().to_owned(),
            url.host()?.to_owned(),
            url.port_or_known_default()?,
        ))
    }
}

/// The allow-list built from the configured destinations.
#[derive(Clone, Debug, Default)]
pub struct DestinationGuard {
    origins: Vec<Origin>,
}

impl DestinationGuard {
    /// The allow-list of these destinations.
    pub fn new(destinations: &[Destination]) -> Self {
        let origins = destinations
            .iter()
            .filter_map(|d| {
                let (scheme, host, port) = Origin::of(&d.url)?;
                Some(Origin {
                    scheme,
                    host,
                    port,
                    addresses: d.addresses.clone(),
                })
            })
            .collect();
        Self { origins }
    }

    /// Resolves an allowed URL to the socket addresses that may be contacted.
    pub fn check(&self, url: &Url) -> Result<Vec<SocketAddr>, GuardError> {
        let (scheme, host, port) = Origin::of(url).ok_or_else(|| GuardError::NoOrigin {
            url: url.to_string(),
        })?;
        let candidates: Vec<&Origin> = self
            .origins
            .iter()
            .filter(|o| o.scheme == scheme && o.host == host && o.port == port)
            .collect();
        if candidates.is_empty() {
            return Err(GuardError::NotAllowed {
                url: url.to_string(),
            });
        }
        let resolved = resolve(&host, port)?;
        let allowed: Vec<SocketAddr> = resolved
            .iter()
            .copied()
            .filter(|addr| candidates.iter().any(|o| o.permits(&host, addr.ip())))
            .collect();
        if allowed.is_empty() {
            return Err(GuardError::AddressRefused {
                host: host.to_string(),
                addrs: resolved.iter().map(SocketAddr::ip).collect(),
            });
        }
        Ok(allowed)
    }
}

impl Origin {
    fn permits(&self, host: &Host<String>, ip: IpAddr) -> bool {
        if !self.addresses.is_empty() {
            return self.addresses.contains(&ip);
        }
        match host {
            Host::Ipv4(literal) => ip == IpAddr::V4(*literal),
            Host::Ipv6(literal) => ip == IpAddr::V6(*literal),
            Host::Domain(_) => is_global(ip),
        }
    }
}

fn resolve(host: &Host<String>, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
    match host {
        Host::Ipv4(ip) => Ok(vec![SocketAddr::new(IpAddr::V4(*ip), port)]),
        Host::Ipv6(ip) => Ok(vec![SocketAddr::new(IpAddr::V6(*ip), port)]),
        Host::Domain(name) => (name.as_str(), port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|source| GuardError::Resolve {
                host: name.clone(),
                source,
            }),
    }
}

/// Whether an address is globally routable (not loopback, private, link-local, shared,
/// documentation, multicast, unspecified or reserved).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || a == 0
                || a >= 240
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b)))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::config::BodyFormat;
    use crate::webhook::sign::WebhookSecret;

    fn destination(url: &str, addresses: &[&str]) -> Destination {
        Destination {
            name: "d".into(),
            url: Url::parse(url).unwrap(),
            secret: WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            format: BodyFormat::Native,
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            bearer_token: None,
        }
    }

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn only_the_configured_origin_passes() {
        let guard = DestinationGuard::new(&[destination("http://127.0.0.1:8080/hook", &[])]);
        let ok = guard
            .check(&url("http://127.0.0.1:8080/other/path"))
            .unwrap();
        assert_eq!(ok, vec!["127.0.0.1:8080".parse().unwrap()]);
        for refused in [
            "https://127.0.0.1:8080/hook",
            "http://127.0.0.1:8081/hook",
            "http://127.0.0.2:8080/hook",
            "http://localhost:8080/hook",
        ] {
            let err = guard.check(&url(refused)).unwrap_err();
            assert!(
                matches!(err, GuardError::NotAllowed { .. }),
                "{refused}: {err}"
            );
            assert!(err.is_refusal());
        }
    }

    #[test]
    fn a_name_resolving_to_a_private_address_is_refused_unless_listed() {
        let guard = DestinationGuard::new(&[destination("http://localhost:9/", &[])]);
        let err = guard.check(&url("http://localhost:9/")).unwrap_err();
        assert!(matches!(err, GuardError::AddressRefused { .. }), "{err}");
        let pinned = DestinationGuard::new(&[destination("http://localhost:9/", &["127.0.0.1"])]);
        let ok = pinned.check(&url("http://localhost:9/")).unwrap();
        assert_eq!(ok, vec!["127.0.0.1:9".parse().unwrap()]);
    }

    #[test]
    fn global_addresses() {
        for ip in ["8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(is_global(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.2.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!is_global(ip.parse().unwrap()), "{ip}");
        }
    }
}
