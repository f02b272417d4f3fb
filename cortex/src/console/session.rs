//! Console sessions: a random 256-bit id in an `HttpOnly; SameSite=Strict` cookie, and a
//! per-session CSRF token that every state-changing form carries and the server compares in
//! constant time. Sessions live in memory and expire after `[console] session_ttl_s`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::users::Role;

/// The session cookie's name.
pub const COOKIE: &str = "qsc_session";
/// Most sessions held at once; the oldest is dropped beyond it.
const MAX_SESSIONS: usize = 10_000;

/// One logged-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form of this session must send back as `csrf`.
    pub csrf: String,
    expires: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        self.csrf.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// The open sessions, by id.
pub struct Sessions {
    ttl: Duration,
    open: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes as hex.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    pub fn new(ttl: Duration) -> Self {
        Sessions {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a session for `user`; returns its id (the cookie value).
    pub fn open(&self, user: &str, role: Role) -> Result<String, getrandom::Error> {
        let id = random_token()?;
        let session = Session {
            user: user.to_owned(),
            role,
            csrf: random_token()?,
            expires: Instant::now() + self.ttl,
        };
        let mut open = self.lock();
        let now = Instant::now();
        open.retain(|_, s| s.expires > now);
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            open.remove(&oldest);
        }
        open.insert(id.clone(), session);
        Ok(id)
    }

    /// The live session with this id.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut open = self.lock();
        match open.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                open.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// The `Set-Cookie` value that carries a session id.
    pub fn cookie(&self, id: &str, secure: bool) -> String {
        format!(
            "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
            self.ttl.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The session id in a `Cookie` header, if any.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_carry_a_csrf_token_and_expire() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let id = sessions.open("alice", Role::Viewer).unwrap();
        let session = sessions.get(&id).unwrap();
        assert_eq!(session.user, "alice");
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches(&id));
        let header = format!("a=b; {COOKIE}={id}; c=d");
        assert_eq!(cookie_value(&header), Some(id.as_str()));
        assert!(sessions.cookie(&id, true).ends_with("; Secure"));
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&id).is_none());
        let id = sessions.open("bob", Role::Operator).unwrap();
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
    }
}
