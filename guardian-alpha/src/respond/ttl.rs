//! The agent's own safety net for timed actions: a block or an isolation with `ttl_s > 0` is
//! rolled back by the agent at expiry even if the cortex never sends the rollback. One thread
//! waits for the earliest deadline; scheduling a key again replaces its rollback, and the
//! explicit rollback (unblock, release) cancels it. Each rollback that runs is reported on the
//! agent's event stream as a `response_rollback` event ([`report_expiry`]).

use qsc_event::{Action, ActionOutcome, EventKind, ResponseRollback};

use super::events::ResponseEvents;
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

/// Logs that `action` ran at TTL expiry with `result` and reports it to the cortex as a
/// `response_rollback` event.
pub fn report_expiry(
    events: &ResponseEvents,
    action: Action,
    result: Result<super::Done, super::RespondError>,
) {
    let report = expiry_report(&action, result);
    match report.outcome {
        ActionOutcome::Done => {
            tracing::info!(action = %report.action, detail = %report.detail, "TTL expired: rolled back")
        }
        _ => {
            tracing::error!(action = %report.action, detail = %report.detail, "TTL expired but the rollback failed")
        }
    }
    events.send(EventKind::ResponseRollback(report));
}

/// The `response_rollback` event for a rollback that ran at TTL expiry.
fn expiry_report(
    action: &Action,
    result: Result<super::Done, super::RespondError>,
) -> ResponseRollback {
    let addr = match action {
        Action::UnblockIp { addr } => Some(*addr),
        _ => None,
    };
    let (outcome, detail) = match result {
        Ok(done) => (ActionOutcome::Done, done.detail),
        Err(err) => (ActionOutcome::Failed, err.to_string()),
    };
    ResponseRollback {
        action: action.name().to_owned(),
        reason: "ttl_expired".to_owned(),
        addr,
        outcome,
        detail,
    }
}

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
    fn expiry_reports_reach_the_receiver() {
        let (events, mut rx) = ResponseEvents::channel();
        let addr: IpAddr = "127.0.0.2".parse().unwrap();
        report_expiry(
            &events,
            Action::UnblockIp { addr },
            Ok(super::super::Done::new("127.0.0.2 unblocked")),
        );
        report_expiry(
            &events,
            Action::Release,
            Err(super::super::RespondError::NoCortexAddress),
        );
        let rollback = |event| match event {
            EventKind::ResponseRollback(r) => r,
            other => panic!("not a rollback: {other:?}"),
        };
        let unblock = rollback(rx.try_recv().unwrap());
        assert_eq!(
            (unblock.action.as_str(), unblock.addr, unblock.outcome),
            ("unblock_ip", Some(addr), ActionOutcome::Done)
        );
        assert_eq!(unblock.reason, "ttl_expired");
        let release = rollback(rx.try_recv().unwrap());
        assert_eq!(
            (release.action.as_str(), release.addr, release.outcome),
            ("release", None, ActionOutcome::Failed)
        );
        assert!(release.detail.contains("cortex"), "{}", release.detail);
        // Without a receiver, only logged.
        report_expiry(
            &ResponseEvents::default(),
            Action::Release,
            Ok(super::super::Done::new("x")),
        );
    }

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
