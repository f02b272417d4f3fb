//! Certificate checks for PEM/DER files and live TLS endpoints: days to expiry against a
//! warning threshold, not-yet-valid, chain verification against the system roots or a given
//! bundle, hostname mismatch and revocation through CRLs.
//!
//! Each problem becomes its own event; a target that cannot be checked at all (unreadable
//! file, unreachable endpoint) becomes `cert_invalid` with the reason, so it is never silent.

pub mod crl;
pub mod tls;

use qsc_event::{Certificate, EventKind};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, ServerName, TrustAnchor, UnixTime,
};
use std::path::Path;
use std::time::Duration;

const SECONDS_PER_DAY: i64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{location} holds no parsable certificate: {reason}")]
    Parse { location: String, reason: String },
    #[error("trust bundle {path} holds no usable root certificate")]
    NoRoots { path: String },
    #[error(transparent)]
    Crl(#[from] crl::CrlError),
    #[error("cannot fetch the certificate of {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

/// What a certificate is checked against.
pub struct CertPolicy {
    pub warn_days: i64,
    pub roots: Vec<TrustAnchor<'static>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub timeout: Duration,
}

/// A target to check.
pub enum Target<'a> {
    File(&'a Path),
    Endpoint {
        endpoint: &'a str,
        server_name: Option<&'a str>,
    },
}

impl CertPolicy {
    /// Loads the trusted roots from a PEM bundle and every CRL.
    pub fn load(
        warn_days: i64,
        ca_bundle: &Path,
        crl_locations: &[String],
        timeout: Duration,
    ) -> Result<CertPolicy, CertError> {
        let roots = load_roots(ca_bundle)?;
        let crls = crl_locations
            .iter()
            .map(|location| crl::load(location, timeout))
            .collect::<Result<_, _>>()?;
        Ok(CertPolicy {
            warn_days,
            roots,
            crls,
            timeout,
        })
    }
}

fn load_roots(bundle: &Path) -> Result<Vec<TrustAnchor<'static>>, CertError> {
    let certs = read_certificates(bundle)?;
    let roots: Vec<TrustAnchor<'static>> = certs
        .iter()
        .filter_map(|der| webpki::anchor_from_trusted_cert(der).ok())
        .map(|anchor| anchor.to_owned())
        .collect();
    if roots.is_empty() {
        return Err(CertError::NoRoots {
            path: bundle.display().to_string(),
        });
    }
    Ok(roots)
}

/// Certificates of a PEM file (all of them, in order) or a DER file (one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let bytes = std::fs::read(path).map_err(|source| CertError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let location = path.display().to_string();
    let certs: Vec<CertificateDer<'static>> = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| CertError::Parse {
                location: location.clone(),
                reason: e.to_string(),
            })?
    } else {
        vec![CertificateDer::from(bytes)]
    };
    if certs.is_empty() {
        return Err(CertError::Parse {
            location,
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

/// Checks one target at `now` (seconds since the epoch); never fails: a target that cannot be
/// checked gives a `cert_invalid` event that says why.
pub fn check_target(target: &Target<'_>, policy: &CertPolicy, now: i64) -> Vec<EventKind> {
    let (location, result) = match target {
        Target::File(path) => (
            path.display().to_string(),
            read_certificates(path)
                .and_then(|chain| evaluate(&path.display().to_string(), &chain, None, policy, now)),
        ),
        Target::Endpoint {
            endpoint,
            server_name,
        } => {
            let name = server_name.unwrap_or_else(|| host_of(endpoint));
            let result = tls::fetch_chain(endpoint, name, policy.timeout)
                .map_err(|reason| CertError::Endpoint {
                    endpoint: endpoint.to_string(),
                    reason,
                })
                .and_then(|chain| evaluate(endpoint, &chain, Some(name), policy, now));
            (endpoint.to_string(), result)
        }
    };
    result.unwrap_or_else(|error| {
        vec![EventKind::CertInvalid(Certificate {
            location,
            subject: String::new(),
            issuer: String::new(),
            serial: String::new(),
            not_before: 0,
            not_after: 0,
            days_left: 0,
            reason: Some(error.to_string()),
        })]
    })
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// Every finding for a chain (leaf first) at `now`.
pub fn evaluate(
    location: &str,
    chain: &[CertificateDer<'_>],
    server_name: Option<&str>,
    policy: &CertPolicy,
    now: i64,
) -> Result<Vec<EventKind>, CertError> {
    let leaf = chain.first().ok_or_else(|| CertError::Parse {
        location: location.to_string(),
        reason: "empty chain".into(),
    })?;
    let summary = summarize(location, leaf, now)?;
    let mut findings = Vec::new();
    let with_reason = |reason: String| Certificate {
        reason: Some(reason),
        ..summary.clone()
    };
    if now < summary.not_before {
        findings.push(EventKind::CertNotYetValid(with_reason(
            "the validity period has not started".into(),
        )));
    } else if now > summary.not_after {
        findings.push(EventKind::CertExpired(with_reason(format!(
            "expired {} days ago",
            -summary.days_left
        ))));
    } else if summary.days_left <= policy.warn_days {
        findings.push(EventKind::CertExpiring(with_reason(format!(
            "expires in {} days (warning threshold {})",
            summary.days_left, policy.warn_days
        ))));
    }
    // The time checks above are reported on their own; verify the chain at a moment inside
    // the leaf's validity so that trust and revocation problems are reported as well.
    let verify_at = now.clamp(
        summary.not_before,
        summary.not_after.max(summary.not_before),
    );
    if let Some(finding) = verify_chain(chain, policy, verify_at) {
        findings.push(match finding {
            ChainFinding::Revoked => EventKind::CertRevoked(with_reason(
                "the serial number is listed in a CRL of its issuer".into(),
            )),
            ChainFinding::Invalid(reason) => EventKind::CertInvalid(with_reason(reason)),
        });
    }
    if let Some(name) = server_name
        && let Some(reason) = hostname_mismatch(leaf, name)
    {
        findings.push(EventKind::CertInvalid(with_reason(reason)));
    }
    Ok(findings)
}

enum ChainFinding {
    Revoked,
    Invalid(String),
}

fn verify_chain(
    chain: &[CertificateDer<'_>],
    policy: &CertPolicy,
    at: i64,
) -> Option<ChainFinding> {
    let leaf = match webpki::EndEntityCert::try_from(&chain[0]) {
        Ok(leaf) => leaf,
        Err(e) => return Some(ChainFinding::Invalid(format!("cannot parse: {e:?}"))),
    };
    let crls: Vec<webpki::CertRevocationList<'_>> = policy
        .crls
        .iter()
        .filter_map(|der| webpki::OwnedCertRevocationList::from_der(der.as_ref()).ok())
        .map(webpki::CertRevocationList::from)
        .collect();
    let crl_refs: Vec<&webpki::CertRevocationList<'_>> = crls.iter().collect();
    let revocation = webpki::RevocationOptionsBuilder::new(&crl_refs)
        .ok()
        .map(|builder| {
            builder
                .with_depth(webpki::RevocationCheckDepth::Chain)
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
    let time = UnixTime::since_unix_epoch(Duration::from_secs(at.max(0) as u64));
    let result = leaf.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &policy.roots,
        &chain[1..],
        time,
        webpki::KeyUsage::server_auth(),
        revocation,
        None,
    );
    match result {
        Ok(_) => None,
        Err(webpki::Error::CertRevoked) => Some(ChainFinding::Revoked),
        Err(webpki::Error::UnknownIssuer) => Some(ChainFinding::Invalid(
            "chain does not lead to a trusted root (unknown issuer)".into(),
        )),
        Err(other) => Some(ChainFinding::Invalid(format!(
            "chain verification failed: {other:?}"
        ))),
    }
}

fn hostname_mismatch(leaf: &CertificateDer<'_>, name: &str) -> Option<String> {
    let server_name = match ServerName::try_from(name) {
        Ok(n) => n,
        Err(e) => return Some(format!("{name:?} is not a valid host name: {e}")),
    };
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    cert.verify_is_valid_for_subject_name(&server_name)
        .err()
        .map(|_| format!("hostname mismatch: the certificate is not valid for {name}"))
}

fn summarize(location: &str, der: &CertificateDer<'_>, now: i64) -> Result<Certificate, CertError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CertError::Parse {
            location: location.to_string(),
            reason: e.to_string(),
        })?;
    let not_before = cert.validity().not_before.timestamp();
    let not_after = cert.validity().not_after.timestamp();
    Ok(Certificate {
        location: location.to_string(),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before,
        not_after,
        days_left: (not_after - now).div_euclid(SECONDS_PER_DAY),
        reason: None,
    })
}

#[cfg(test)]
mod tests;
