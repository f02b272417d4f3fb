//! What callers queue for a store's writer (SQLite's group-commit thread, PostgreSQL's writer
//! thread), and the rule both writers keep after a failed commit.
//!
//! Ingest submits an agent's next batch before the previous one is durable, and acks each once
//! it is. So that a failed commit never leaves a gap behind a later batch that succeeded (the
//! agent resumes after the highest stored seq), a writer refuses every later event write of an
//! agent whose events were in a failed commit, until that agent's next delivery session asks
//! where to resume ([`Write::Resume`], queued by `highest_seq`). [`FailedAgents`] is that rule.

use std::collections::HashSet;

use crossbeam_channel::{Receiver, Sender};

use super::codec::{severity_rank, to_i64, to_json};
use super::{AppendOutcome, StoreError};
use crate::score::Incident;

/// One event, validated and sealed, ready to insert.
pub(super) struct SealedRow {
    pub seq: i64,
    pub time_ns: i64,
    pub kind: &'static str,
    pub nonce: [u8; super::cipher::NONCE_LEN],
    pub payload: Vec<u8>,
}

/// One incident row, encoded.
pub(super) struct IncidentRow {
    pub id: String,
    pub host: String,
    pub severity_rank: i64,
    pub status: &'static str,
    pub updated_ns: i64,
    pub body: String,
}

impl IncidentRow {
    /// Encodes `incident` (on the submitting thread, outside the writer).
    pub fn encode(incident: &Incident) -> Result<Self, StoreError> {
        Ok(IncidentRow {
            id: incident.id.clone(),
            host: incident.host.clone(),
            severity_rank: severity_rank(incident.severity),
            status: incident.status.as_str(),
            updated_ns: to_i64("updated_ns", incident.updated_ns)?,
            body: to_json("incidents", &incident.id, incident)?,
        })
    }
}

/// What a job writes.
pub(super) enum Write {
    Events {
        host_id: String,
        agent: &'static str,
        rows: Vec<SealedRow>,
    },
    Incident(IncidentRow),
    NodeState {
        host: String,
        body: String,
    },
    /// A new delivery session of the agent starts and reads its resume point from what is
    /// committed: lifts the refusal a failed commit of the agent's writes queued before it
    /// left, since the session delivers those again. Answered once everything queued before it
    /// is committed (or refused).
    Resume {
        host_id: String,
        agent: &'static str,
    },
}

/// An agent's delivery sequence: the host and the agent's column name.
pub(super) type AgentKey = (String, &'static str);

impl Write {
    /// Rows this write adds (1 for a write of something else).
    pub fn event_count(&self) -> usize {
        match self {
            Write::Events { rows, .. } => rows.len(),
            Write::Incident(_) | Write::NodeState { .. } | Write::Resume { .. } => 1,
        }
    }

    /// The agent whose delivery sequence this write stores into, if any.
    pub fn events_of(&self) -> Option<AgentKey> {
        match self {
            Write::Events { host_id, agent, .. } => Some((host_id.clone(), agent)),
            _ => None,
        }
    }
}

/// A queued write and where its result goes.
pub(super) struct Job {
    pub write: Write,
    /// Answered after the commit; only event writes report a non-empty outcome.
    pub reply: Sender<Result<AppendOutcome, StoreError>>,
}

/// Where a job's result arrives.
pub(super) type Answer = Receiver<Result<AppendOutcome, StoreError>>;

impl Job {
    /// A job of `write` and the receiver of its result.
    pub fn new(write: Write) -> (Job, Answer) {
        let (reply, answer) = crossbeam_channel::bounded(1);
        (Job { write, reply }, answer)
    }
}

/// The agents whose events were in a failed commit and that have not resumed since: a writer
/// passes every job through [`FailedAgents::admit`] before writing it, and reports each failed
/// commit with [`FailedAgents::failed`].
#[derive(Default)]
pub(super) struct FailedAgents(HashSet<AgentKey>);

impl FailedAgents {
    /// Returns the jobs to write, in order: the event writes of an agent with a failed commit
    /// are answered with [`StoreError::EarlierBatchFailed`] instead, and a `Resume` lifts its
    /// agent's refusal for the jobs behind it.
    pub fn admit(&mut self, jobs: impl IntoIterator<Item = Job>) -> Vec<Job> {
        let jobs = jobs.into_iter();
        if self.0.is_empty() {
            return jobs.collect();
        }
        let mut kept = Vec::with_capacity(jobs.size_hint().0);
        for job in jobs {
            if let Write::Resume { host_id, agent } = &job.write {
                self.0.remove(&(host_id.clone(), *agent));
            }
            match job.write.events_of() {
                Some(key) if self.0.contains(&key) => {
                    // A submitter that stopped waiting does not need the answer.
                    let _ = job.reply.send(Err(StoreError::EarlierBatchFailed {
                        host_id: key.0,
                        agent: key.1,
                    }));
                }
                _ => kept.push(job),
            }
        }
        kept
    }

    /// A commit holding `writes`, in queue order, failed (nothing of it is stored): their
    /// agents are refused until they resume. A resume in the same commit behind an agent's
    /// failed writes already counts: that session read its resume point before them.
    pub fn failed<'a>(&mut self, writes: impl IntoIterator<Item = &'a Write>) {
        for write in writes {
            match write {
                Write::Resume { host_id, agent } => {
                    self.0.remove(&(host_id.clone(), *agent));
                }
                _ => self.0.extend(write.events_of()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(host: &str, agent: &'static str) -> Write {
        Write::Events {
            host_id: host.into(),
            agent,
            rows: Vec::new(),
        }
    }

    #[test]
    fn a_failed_agent_is_refused_until_it_resumes_and_no_one_else_is() {
        let mut failed = FailedAgents::default();
        failed.failed([
            &events("web-01", "alpha"),
            &Write::NodeState {
                host: "web-01".into(),
                body: String::new(),
            },
        ]);
        let (refused, refused_answer) = Job::new(events("web-01", "alpha"));
        let (other_agent, _) = Job::new(events("web-01", "beta"));
        let (resume, _) = Job::new(Write::Resume {
            host_id: "web-01".into(),
            agent: "alpha",
        });
        let (after_resume, _) = Job::new(events("web-01", "alpha"));
        let kept = failed.admit([refused, other_agent, resume, after_resume]);
        assert_eq!(kept.len(), 3, "only the write before the resume is refused");
        assert!(matches!(
            refused_answer.try_recv(),
            Ok(Err(StoreError::EarlierBatchFailed { agent: "alpha", .. }))
        ));
        let (next, _) = Job::new(events("web-01", "alpha"));
        assert_eq!(
            failed.admit([next]).len(),
            1,
            "the refusal is lifted for good"
        );
    }

    #[test]
    fn a_resume_behind_the_failed_writes_in_the_same_commit_lifts_their_refusal() {
        let resume = |agent| Write::Resume {
            host_id: "web-01".into(),
            agent,
        };
        let mut failed = FailedAgents::default();
        failed.failed([
            &events("web-01", "alpha"),
            &resume("alpha"),
            &resume("beta"),
            &events("web-01", "beta"),
        ]);
        let (alpha, _) = Job::new(events("web-01", "alpha"));
        let (beta, _) = Job::new(events("web-01", "beta"));
        let kept = failed.admit([alpha, beta]);
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].write.events_of(), Some(("web-01".into(), "alpha")));
    }
}
