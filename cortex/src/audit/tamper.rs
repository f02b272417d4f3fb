//! What verification must catch on every chain backend, written once: each backend's test
//! module runs all of it with [`tamper_tests!`] and a [`Chain`] that can be edited behind the
//! log's back, as an attacker with write access to the database would.

use serde_json::json;

use super::record::{Hash, chain_hash};
use super::verify::Problem;
use super::{AuditEntry, AuditKind, AuditLog, AuditSink};

/// Checkpoint interval of the test chains: 20 records carry checkpoints at 4, 8, …, 20.
pub(super) const INTERVAL: u64 = 4;
/// The test chains' signing key seed.
pub(super) const SEED: [u8; 32] = [42u8; 32];

/// A chain under test and raw SQL access to where it is stored.
pub(super) trait Chain {
    fn log(&self) -> &AuditLog;
    /// Opens the same chain again.
    fn reopen(&self) -> AuditLog;
    /// Runs SQL statements directly on the chain's database.
    fn sql(&self, sql: &str) -> Result<(), String>;
    /// Removes the append-only triggers, as an attacker does first.
    fn drop_guards(&self);
    /// The SQL literal of a byte string.
    fn bytes(&self, bytes: &[u8]) -> String;
}

/// One `#[test]` per tamper check, each with a fresh chain from `$chain` (an
/// `Option<impl Chain>`: `None` skips, its constructor printing why).
macro_rules! tamper_tests {
    ($chain:expr) => {
        $crate::audit::tamper::tamper_tests!(@each $chain;
            an_untouched_chain_verifies_and_survives_reopening,
            ordinary_sql_cannot_update_or_delete,
            an_edit_is_reported_at_the_edited_record,
            a_deletion_is_reported_at_the_missing_record,
            a_deletion_hidden_by_renumbering_is_reported,
            an_insertion_is_reported_at_the_inserted_record,
            a_reorder_is_reported_at_the_first_moved_record,
            a_rewritten_chain_is_caught_by_the_next_checkpoint,
            a_deleted_checkpoint_is_reported,
            truncating_signed_records_is_reported);
    };
    (@each $chain:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                if let Some(chain) = $chain {
                    $crate::audit::tamper::fill(&chain);
                    $crate::audit::tamper::$name(&chain);
                }
            }
        )*
    };
}
pub(crate) use tamper_tests;

/// Appends the 20 records every check starts from.
pub(super) fn fill(chain: &impl Chain) {
    for i in 1..=20 {
        chain
            .log()
            .record(AuditEntry {
                kind: AuditKind::NodeTransition,
                actor: "cortex".into(),
                body: json!({"host": "web-01", "step": i}),
            })
            .unwrap();
    }
}

fn problem(chain: &impl Chain) -> Problem {
    let report = chain.log().verify().unwrap();
    let problem = report.problem.expect("tampering must be detected");
    // Every problem renders a sentence naming the record.
    assert!(problem.to_string().contains(&problem.seq().to_string()));
    problem
}

fn tamper(chain: &impl Chain, sql: &str) {
    chain.sql(sql).unwrap();
}

/// Moves records with seq >= `from` by `delta` without tripping the primary key.
fn shift(chain: &impl Chain, from: u64, delta: i64) {
    tamper(
        chain,
        &format!(
            "UPDATE audit_records SET seq = -(seq + {delta}) WHERE seq >= {from};
             UPDATE audit_records SET seq = -seq WHERE seq < 0;"
        ),
    );
}

fn hash_of(chain: &impl Chain, seq: u64) -> Hash {
    chain.log().records(seq, seq).unwrap()[0].hash
}

pub(super) fn an_untouched_chain_verifies_and_survives_reopening(chain: &impl Chain) {
    let report = chain.log().verify().unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.records, 20);
    assert_eq!(report.checkpoints, 5);
    assert_eq!(report.unsigned_tail, 0);
    let log = chain.reopen();
    let next = log
        .record(AuditEntry {
            kind: AuditKind::Approval,
            actor: "operator:alice".into(),
            body: json!({"release": "web-01"}),
        })
        .unwrap();
    assert_eq!(next.seq, 21);
    let report = log.verify().unwrap();
    assert!(report.is_intact());
    assert_eq!(report.unsigned_tail, 1);
    let records = log.records(20, 21).unwrap();
    assert_eq!(records[1].prev_hash, records[0].hash);
}

pub(super) fn ordinary_sql_cannot_update_or_delete(chain: &impl Chain) {
    let update = chain.sql("UPDATE audit_records SET actor = 'x' WHERE seq = 3");
    assert!(update.unwrap_err().contains("append-only"));
    assert!(chain.sql("DELETE FROM audit_records").is_err());
    assert!(chain.sql("DELETE FROM audit_checkpoints").is_err());
    assert!(chain.log().verify().unwrap().is_intact());
}

pub(super) fn an_edit_is_reported_at_the_edited_record(chain: &impl Chain) {
    chain.drop_guards();
    tamper(
        chain,
        "UPDATE audit_records SET body = '{\"host\":\"web-02\",\"step\":7}' WHERE seq = 7",
    );
    assert_eq!(problem(chain), Problem::Edited { seq: 7 });
}

pub(super) fn a_deletion_is_reported_at_the_missing_record(chain: &impl Chain) {
    chain.drop_guards();
    tamper(chain, "DELETE FROM audit_records WHERE seq IN (7, 8)");
    assert_eq!(
        problem(chain),
        Problem::Deleted {
            seq: 7,
            last_missing: 8
        }
    );
}

pub(super) fn a_deletion_hidden_by_renumbering_is_reported(chain: &impl Chain) {
    chain.drop_guards();
    tamper(chain, "DELETE FROM audit_records WHERE seq = 7");
    shift(chain, 8, -1);
    assert_eq!(problem(chain), Problem::MissingPredecessor { seq: 7 });
}

pub(super) fn an_insertion_is_reported_at_the_inserted_record(chain: &impl Chain) {
    chain.drop_guards();
    shift(chain, 7, 1);
    // A well-formed forged record: it links to record 6 and carries a correct hash.
    let prev = hash_of(chain, 6);
    let body = "{\"host\":\"web-01\",\"forged\":true}";
    let hash = chain_hash(&prev, 7, 1, "approval", "operator:mallory", body);
    tamper(
        chain,
        &format!(
            "INSERT INTO audit_records (seq, time_ns, kind, actor, body, prev_hash, hash) \
             VALUES (7, 1, 'approval', 'operator:mallory', '{body}', {}, {})",
            chain.bytes(&prev),
            chain.bytes(&hash)
        ),
    );
    assert_eq!(problem(chain), Problem::Inserted { seq: 7 });
}

pub(super) fn a_reorder_is_reported_at_the_first_moved_record(chain: &impl Chain) {
    chain.drop_guards();
    tamper(
        chain,
        "UPDATE audit_records SET seq = -1 WHERE seq = 7;
         UPDATE audit_records SET seq = 7 WHERE seq = 8;
         UPDATE audit_records SET seq = 8 WHERE seq = -1;",
    );
    assert_eq!(
        problem(chain),
        Problem::Reordered {
            seq: 7,
            belongs_after: 8
        }
    );
}

/// An attacker who edits record 5 and recomputes every later hash defeats the chain alone;
/// the next signed checkpoint (record 8) catches it.
pub(super) fn a_rewritten_chain_is_caught_by_the_next_checkpoint(chain: &impl Chain) {
    chain.drop_guards();
    tamper(
        chain,
        "UPDATE audit_records SET actor = 'operator:mallory' WHERE seq = 5",
    );
    let records = chain.log().records(5, 20).unwrap();
    let mut prev = hash_of(chain, 4);
    for record in &records {
        let hash = chain_hash(
            &prev,
            record.seq,
            record.time_ns,
            &record.kind,
            &record.actor,
            &record.body,
        );
        tamper(
            chain,
            &format!(
                "UPDATE audit_records SET prev_hash = {}, hash = {} WHERE seq = {}",
                chain.bytes(&prev),
                chain.bytes(&hash),
                record.seq
            ),
        );
        prev = hash;
    }
    assert_eq!(
        problem(chain),
        Problem::ChainRewritten {
            seq: 8,
            previous_checkpoint: 4
        }
    );
    // Re-pointing the checkpoint at the new hash breaks its signature instead.
    tamper(
        chain,
        &format!(
            "UPDATE audit_checkpoints SET record_hash = {} WHERE seq = 8",
            chain.bytes(&hash_of(chain, 8))
        ),
    );
    assert_eq!(problem(chain), Problem::CheckpointSignature { seq: 8 });
}

pub(super) fn a_deleted_checkpoint_is_reported(chain: &impl Chain) {
    chain.drop_guards();
    tamper(chain, "DELETE FROM audit_checkpoints WHERE seq = 8");
    assert_eq!(
        problem(chain),
        Problem::CheckpointMissing {
            seq: 8,
            previous_checkpoint: 4
        }
    );
    tamper(chain, "DELETE FROM audit_checkpoints WHERE seq >= 12");
    assert!(matches!(problem(chain), Problem::CheckpointMissing { .. }));
}

pub(super) fn truncating_signed_records_is_reported(chain: &impl Chain) {
    chain.drop_guards();
    tamper(chain, "DELETE FROM audit_records WHERE seq > 17");
    assert_eq!(
        problem(chain),
        Problem::Truncated {
            last_seq: 17,
            checkpoint_seq: 20
        }
    );
}
