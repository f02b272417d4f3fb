//! Certificate revocation lists from files or plain `http://` URLs, PEM or DER.
//!
//! CRLs are signed by their issuer, so fetching them over plain HTTP is the norm (RFC 5280);
//! the signature is checked by webpki during chain verification.

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest CRL accepted, to bound memory on a hostile server.
const MAX_CRL_BYTES: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("cannot read CRL file {location}: {source}")]
    Read {
        location: String,
        source: std::io::Error,
    },
    #[error("cannot fetch CRL {location}: {reason}")]
    Fetch { location: String, reason: String },
    #[error("CRL {location} is neither a PEM nor a DER certificate revocation list: {reason}")]
    Parse { location: String, reason: String },
}

/// Loads one CRL from a path or an `http://` URL.
pub fn load(
    location: &str,
    timeout: Duration,
) -> Result<CertificateRevocationListDer<'static>, CrlError> {
    let bytes = if location.starts_with("http://") {
        http_get(location, timeout).map_err(|reason| CrlError::Fetch {
            location: location.to_string(),
            reason,
        })?
    } else {
        std::fs::read(location).map_err(|source| CrlError::Read {
            location: location.to_string(),
            source,
        })?
    };
    decode(location, bytes)
}

fn decode(
    location: &str,
    bytes: Vec<u8>,
) -> Result<CertificateRevocationListDer<'static>, CrlError> {
    let parse_error = |reason: String| CrlError::Parse {
        location: location.to_string(),
        reason,
    };
    let der = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(&bytes)
            .map_err(|e| parse_error(e.to_string()))?
    } else {
        CertificateRevocationListDer::from(bytes)
    };
    webpki::OwnedCertRevocationList::from_der(der.as_ref())
        .map_err(|e| parse_error(format!("{e:?}")))?;
    Ok(der)
}

/// A minimal HTTP/1.0 GET: no redirects, no TLS, a timeout on every step and a size cap.
fn http_get(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("the URL needs a host (and no credentials)".into());
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let address = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority} has no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&address, timeout).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: guardian-beta\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut response = Vec::new();
    stream
        .take(MAX_CRL_BYTES + 64 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| format!("receive: {e}"))?;
    split_response(&response)
}

fn split_response(response: &[u8]) -> Result<Vec<u8>, String> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the response has no header end")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let status = head.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("server answered {status:?}"));
    }
    let body = &response[end + 4..];
    if body.len() as u64 > MAX_CRL_BYTES {
        return Err(format!("body exceeds {MAX_CRL_BYTES} bytes"));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_responses_are_checked() {
        assert_eq!(
            split_response(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody").unwrap(),
            b"body"
        );
        assert!(split_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(split_response(b"garbage").is_err());
    }

    #[test]
    fn garbage_is_not_a_crl() {
        assert!(matches!(
            decode("x", b"not a crl".to_vec()),
            Err(CrlError::Parse { .. })
        ));
        assert!(matches!(
            load("/nonexistent/crl.pem", Duration::from_secs(1)),
            Err(CrlError::Read { .. })
        ));
    }
}
