//! Certificates, CRLs and a TLS server are generated here with rcgen; nothing is mocked.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SerialNumber,
};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use time::{Duration as Days, OffsetDateTime};

struct Pki {
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    dir: tempfile::TempDir,
}

struct Leaf {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

impl Pki {
    fn new() -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "QSC Test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca,
            ca_key,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn leaf(&self, host: &str, serial: u64, from_days: i64, to_days: i64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![host.to_string()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = OffsetDateTime::now_utc() + Days::days(from_days);
        params.not_after = OffsetDateTime::now_utc() + Days::days(to_days);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Leaf { cert, key }
    }

    fn crl_pem(&self, revoked: &[u64]) -> String {
        let params = CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - Days::days(1),
            next_update: OffsetDateTime::now_utc() + Days::days(7),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: OffsetDateTime::now_utc() - Days::days(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.ca, &self.ca_key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn policy(&self, crls: &[String]) -> CertPolicy {
        let bundle = self.write("ca.pem", self.ca.pem().as_bytes());
        CertPolicy::load(30, &bundle, crls, Duration::from_secs(5)).unwrap()
    }

    fn check_file(&self, leaf: &Leaf, policy: &CertPolicy) -> Vec<EventKind> {
        let path = self.write("leaf.pem", leaf.cert.pem().as_bytes());
        check_target(&Target::File(&path), policy, now())
    }
}

fn kinds(findings: &[EventKind]) -> Vec<&'static str> {
    findings.iter().map(|f| f.name()).collect()
}

#[test]
fn valid_certificate_has_no_findings() {
    let pki = Pki::new();
    let leaf = pki.leaf("web.example", 1, -1, 365);
    assert!(pki.check_file(&leaf, &pki.policy(&[])).is_empty());
}

#[test]
fn der_files_are_read_too() {
    let pki = Pki::new();
    let leaf = pki.leaf("web.example", 1, -1, 365);
    let path = pki.write("leaf.der", leaf.cert.der());
    assert!(check_target(&Target::File(&path), &pki.policy(&[]), now()).is_empty());
}

#[test]
fn expiring_expired_and_not_yet_valid() {
    let pki = Pki::new();
    let policy = pki.policy(&[]);
    let expiring = pki.check_file(&pki.leaf("a", 1, -10, 10), &policy);
    assert_eq!(kinds(&expiring), ["cert_expiring"]);
    let EventKind::CertExpiring(details) = &expiring[0] else {
        unreachable!("checked above")
    };
    assert!((9..=10).contains(&details.days_left), "{details:?}");
    assert_eq!(details.subject, "CN=a");
    assert_eq!(details.issuer, "CN=QSC Test CA");
    assert_eq!(
        kinds(&pki.check_file(&pki.leaf("a", 2, -10, -2), &policy)),
        ["cert_expired"]
    );
    assert_eq!(
        kinds(&pki.check_file(&pki.leaf("a", 3, 5, 100), &policy)),
        ["cert_not_yet_valid"]
    );
}

#[test]
fn warning_threshold_is_configurable() {
    let pki = Pki::new();
    let mut policy = pki.policy(&[]);
    policy.warn_days = 5;
    assert!(
        pki.check_file(&pki.leaf("a", 1, -10, 10), &policy)
            .is_empty()
    );
}

#[test]
fn unknown_issuer_is_invalid() {
    let pki = Pki::new();
    let other = Pki::new();
    let findings = other.check_file(&other.leaf("a", 1, -1, 100), &pki.policy(&[]));
    assert_eq!(kinds(&findings), ["cert_invalid"]);
}

#[test]
fn revoked_in_a_crl_file() {
    let pki = Pki::new();
    let crl = pki.write("ca.crl.pem", pki.crl_pem(&[42]).as_bytes());
    let policy = pki.policy(&[crl.display().to_string()]);
    assert_eq!(
        kinds(&pki.check_file(&pki.leaf("a", 42, -1, 100), &policy)),
        ["cert_revoked"]
    );
    assert!(
        pki.check_file(&pki.leaf("a", 43, -1, 100), &policy)
            .is_empty()
    );
}

#[test]
fn revoked_in_a_crl_served_over_http() {
    let pki = Pki::new();
    let body = pki.crl_pem(&[7]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = stream.read(&mut request).unwrap();
        assert!(request[..n].starts_with(b"GET /ca.crl HTTP/1.0\r\n"));
        let header = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        stream.write_all(header.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
    });
    let policy = pki.policy(&[format!("http://127.0.0.1:{port}/ca.crl")]);
    server.join().unwrap();
    assert_eq!(
        kinds(&pki.check_file(&pki.leaf("a", 7, -1, 100), &policy)),
        ["cert_revoked"]
    );
}

/// Serves one TLS handshake with `leaf` on a loopback port.
fn serve_tls_once(leaf: Leaf) -> (u16, std::thread::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let key = rustls::pki_types::PrivateKeyDer::try_from(leaf.key.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert.der().clone()], key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let (mut socket, _) = listener.accept().unwrap();
        let mut connection = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while connection.is_handshaking() {
            if connection.complete_io(&mut socket).is_err() {
                return;
            }
        }
        let _ = connection.complete_io(&mut socket);
    });
    (port, handle)
}

#[test]
fn tls_endpoint_valid_and_wrong_host() {
    let pki = Pki::new();
    let policy = pki.policy(&[]);
    let (port, server) = serve_tls_once(pki.leaf("localhost", 1, -1, 100));
    let endpoint = format!("127.0.0.1:{port}");
    let target = Target::Endpoint {
        endpoint: &endpoint,
        server_name: Some("localhost"),
    };
    assert!(check_target(&target, &policy, now()).is_empty());
    server.join().unwrap();

    let (port, server) = serve_tls_once(pki.leaf("localhost", 2, -1, 100));
    let endpoint = format!("127.0.0.1:{port}");
    let target = Target::Endpoint {
        endpoint: &endpoint,
        server_name: Some("other.example"),
    };
    let findings = check_target(&target, &policy, now());
    assert_eq!(kinds(&findings), ["cert_invalid"]);
    let EventKind::CertInvalid(details) = &findings[0] else {
        unreachable!("checked above")
    };
    assert!(
        details
            .reason
            .as_deref()
            .unwrap()
            .contains("hostname mismatch")
    );
    assert_eq!(details.location, endpoint);
    server.join().unwrap();
}

#[test]
fn unreachable_endpoint_and_missing_file_are_reported() {
    let pki = Pki::new();
    let policy = pki.policy(&[]);
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = closed.local_addr().unwrap().to_string();
    drop(closed);
    let target = Target::Endpoint {
        endpoint: &endpoint,
        server_name: None,
    };
    assert_eq!(
        kinds(&check_target(&target, &policy, now())),
        ["cert_invalid"]
    );
    let missing = pki.dir.path().join("missing.pem");
    assert_eq!(
        kinds(&check_target(&Target::File(&missing), &policy, now())),
        ["cert_invalid"]
    );
    assert_eq!(host_of("[::1]:443"), "::1");
    assert_eq!(host_of("example.org:443"), "example.org");
}

#[test]
fn system_bundle_loads_when_present() {
    let bundle = Path::new(crate::config::DEFAULT_CA_BUNDLE);
    if !bundle.exists() {
        eprintln!(
            "skipping: {} is absent (install ca-certificates)",
            bundle.display()
        );
        return;
    }
    let policy = CertPolicy::load(30, bundle, &[], Duration::from_secs(1)).unwrap();
    assert!(policy.roots.len() > 50);
}
