//! Follows the auth log for login failures and successes (sshd, sudo, su, login).

use std::{
    io::{Read, Seek, SeekFrom},
    net::IpAddr,
    path::{Path, PathBuf},
};

use qsc_event::{AuthAttempt, EventKind};

/// Reads lines appended to an auth log since the last call; survives rotation/truncation.
pub struct AuthLog {
    path: Option<PathBuf>,
    offset: u64,
    partial: String,
}

impl AuthLog {
    /// Follows the first existing file of `candidates`, starting at its current end.
    pub fn open(candidates: &[PathBuf]) -> Self {
        let path = candidates.iter().find(|p| p.is_file()).cloned();
        let offset = path
            .as_deref()
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        AuthLog {
            path,
            offset,
            partial: String::new(),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// New complete lines since the last call.
    pub fn new_lines(&mut self) -> Vec<String> {
        let Some(path) = &self.path else {
            return Vec::new();
        };
        let Ok(mut file) = std::fs::File::open(path) else {
            return Vec::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        if len < self.offset {
            self.offset = 0; // rotated or truncated
            self.partial.clear();
        }
        let mut text = String::new();
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let Ok(read) = file.take(16 * 1024 * 1024).read_to_string(&mut text) else {
            return Vec::new();
        };
        self.offset += read as u64;
        self.partial.push_str(&text);
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_owned).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}

/// An auth event for a log line, if it is one.
pub fn parse_line(line: &str) -> Option<EventKind> {
    let service = service_of(line);
    if let Some(rest) = after(line, "Failed password for ") {
        let rest = rest.strip_prefix("invalid user ").unwrap_or(rest);
        return Some(EventKind::AuthFailure(attempt(
            rest,
            &service,
            "failed password",
        )));
    }
    if let Some(rest) = after(line, "Invalid user ") {
        return Some(EventKind::AuthFailure(attempt(
            rest,
            &service,
            "invalid user",
        )));
    }
    if let Some(rest) = after(line, "Accepted ") {
        let (method, rest) = rest.split_once(" for ")?;
        return Some(EventKind::AuthSuccess(attempt(rest, &service, method)));
    }
    if line.contains("authentication failure") && !line.contains("sshd") {
        let user = after(line, " user=").and_then(|u| u.split_whitespace().next());
        return Some(EventKind::AuthFailure(AuthAttempt {
            user: user.unwrap_or("").to_owned(),
            remote_ip: None,
            service,
            detail: Some("authentication failure".into()),
        }));
    }
    None
}

fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|i| &line[i + marker.len()..])
}

/// "alice from 10.0.0.1 port 22 ssh2" → user and address.
fn attempt(rest: &str, service: &str, detail: &str) -> AuthAttempt {
    let mut words = rest.split_whitespace();
    let user = words.next().unwrap_or("").to_owned();
    let remote_ip = after(rest, " from ")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    AuthAttempt {
        user,
        remote_ip,
        service: service.to_owned(),
        detail: Some(detail.to_owned()),
    }
}

/// The program tag of a syslog line: `… host sshd[123]: …` → `sshd`.
fn service_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_suffix(':'))
        .map(|tag| tag.split('[').next().unwrap_or(tag).to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sshd_failures_and_successes() {
        let fail = "Nov 23 10:00:00 web sshd[99]: Failed password for invalid user bob from 127.0.0.9 port 5000 ssh2";
        let Some(EventKind::AuthFailure(a)) = parse_line(fail) else {
            panic!("not a failure")
        };
        assert_eq!(a.user, "bob");
        assert_eq!(a.service, "sshd");
        assert_eq!(a.remote_ip, Some("127.0.0.9".parse().unwrap()));
        let ok =
            "2026-11-23T10:00:01 web sshd[99]: Accepted password for alice from ::1 port 5001 ssh2";
        let Some(EventKind::AuthSuccess(a)) = parse_line(ok) else {
            panic!("not a success")
        };
        assert_eq!(a.user, "alice");
        assert_eq!(a.detail.as_deref(), Some("password"));
        assert_eq!(a.remote_ip, Some("::1".parse().unwrap()));
        let sudo = "Nov 23 10:00:02 web sudo: pam_unix(sudo:auth): authentication failure; logname= uid=1000 euid=0 tty=/dev/pts/0 ruser=carol rhost=  user=carol";
        assert!(matches!(parse_line(sudo), Some(EventKind::AuthFailure(_))));
        assert!(parse_line("Nov 23 10:00:03 web cron[1]: session opened").is_none());
    }

    #[test]
    fn follows_appends_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut log = AuthLog::open(&[dir.path().join("missing"), path.clone()]);
        assert_eq!(log.path(), Some(path.as_path()));
        assert!(log.new_lines().is_empty());
        std::fs::write(&path, "old line\nnew one\npart").unwrap();
        assert_eq!(log.new_lines(), ["new one"]);
        std::fs::write(&path, "x\n").unwrap();
        assert_eq!(log.new_lines(), ["x"]);
    }
}
