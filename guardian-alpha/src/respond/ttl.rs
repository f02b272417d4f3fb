//! The agent's own safety net for timed actions: a block or an isolation with `ttl_s > 0` is
//! rolled back by the agent at expiry even if the cortex never sends the rollback. One thread
//! waits for the earliest deadline; scheduling a key again replaces its rollback, and the
//! explicit rollback (unblock, release) cancels it.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// What a pending rollback undoes; one pending rollback per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RollbackKey {
    Block(IpAddr),
    Isolation,
}

type Rollback = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct State {
    pending: BTreeMap<RollbackKey, (Instant, Rollback)>,
    stopping: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rollback runs outside the lock, so a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs rollbacks at their deadlines on a thread of its own; stops (without running what is
/// still pending) when dropped.
pub struct RollbackScheduler {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl RollbackScheduler {
    /// Starts the thread that runs rollbacks.
    pub fn start() -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("qsc-rollback".into())
            .spawn(move || run(&worker_shared))?;
        Ok(RollbackScheduler {
            shared,
            worker: Some(worker),
        })
    }

    /// Runs `rollback` after `ttl`, replacing any rollback pending for `key`.
    pub fn schedule(&self, key: RollbackKey, ttl: Duration, rollback: Rollback) {
        let deadline = Instant::now() + ttl;
        self.shared.lock().pending.insert(key, (deadline, rollback));
        self.shared.changed.notify_all();
    }

    /// Drops the rollback pending for `key`, if any.
    pub fn cancel(&self, key: RollbackKey) {
        self.shared.lock().pending.remove(&key);
        self.shared.changed.notify_all();
    }

    /// How many rollbacks wait for their deadline.
    pub fn pending(&self) -> usize {
        self.shared.lock().pending.len()
    }

    /// Blocks until no rollback is pending (each ran at its deadline or was cancelled).
    pub fn wait_idle(&self) {
        let mut state = self.shared.lock();
        while !state.pending.is_empty() {
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for RollbackScheduler {
    fn drop(&mut self) {
        self.shared.lock().stopping = true;
        self.shared.changed.notify_all();
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::warn!("the rollback thread panicked");
        }
    }
}

fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stopping {
            return;
        }
        let now = Instant::now();
        let due = state
            .pending
            .iter()
            .find(|(_, (deadline, _))| *deadline <= now)
            .map(|(key, _)| *key);
        if let Some(key) = due {
            if let Some((_, rollback)) = state.pending.remove(&key) {
                drop(state);
                tracing::info!(?key, "TTL expired: rolling back");
                rollback();
                state = shared.lock();
                shared.changed.notify_all();
            }
            continue;
        }
        let next = state.pending.values().map(|(deadline, _)| *deadline).min();
        state = match next {
            Some(deadline) => {
                let wait = deadline.saturating_duration_since(now);
                shared
                    .changed
                    .wait_timeout(state, wait)
                    .map(|(guard, _)| guard)
                    .unwrap_or_else(|p| p.into_inner().0)
            }
            None => shared
                .changed
                .wait(state)
                .unwrap_or_else(|p| p.into_inner()),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn runs_at_deadline_replaces_and_cancels() {
        let scheduler = RollbackScheduler::start().unwrap();
        let runs = Arc::new(AtomicU32::new(0));
        let counter = |n: u32| {
            let runs = runs.clone();
            Box::new(move || {
                runs.fetch_add(n, Ordering::SeqCst);
            }) as Rollback
        };
        let a = RollbackKey::Block("127.0.0.2".parse().unwrap());
        scheduler.schedule(a, Duration::from_secs(60), counter(100));
        // Replaces the first: only this one runs.
        scheduler.schedule(a, Duration::from_millis(20), counter(1));
        scheduler.schedule(
            RollbackKey::Isolation,
            Duration::from_secs(60),
            counter(1000),
        );
        scheduler.cancel(RollbackKey::Isolation);
        let started = Instant::now();
        scheduler.wait_idle();
        assert!(started.elapsed() >= Duration::from_millis(15));
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(scheduler.pending(), 0);
    }
}
