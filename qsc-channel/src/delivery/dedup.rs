//! Per-agent de-duplication on the cortex: accept each sequence number once, in order.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DedupError {
    #[error("sequence gap: expected {expected}, batch starts at {got}")]
    Gap { expected: u64, got: u64 },
}

/// Tracks the highest contiguous sequence number stored for one agent. The caller persists
/// that number with the events (it is [`crate::delivery::EventSink::stored_up_to`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dedup {
    stored_up_to: u64,
}

impl Dedup {
    pub fn new(stored_up_to: u64) -> Self {
        Dedup { stored_up_to }
    }

    pub fn stored_up_to(&self) -> u64 {
        self.stored_up_to
    }

    /// For a run of `count` sequence numbers starting at `first_seq`, returns how many leading
    /// ones were already stored (re-sent after a reconnect). A run starting beyond the next
    /// expected number is a gap and is refused.
    pub fn already_stored(&self, first_seq: u64, count: u64) -> Result<u64, DedupError> {
        let expected = self.stored_up_to + 1;
        if first_seq > expected {
            return Err(DedupError::Gap {
                expected,
                got: first_seq,
            });
        }
        Ok((expected - first_seq).min(count))
    }

    /// Marks everything up to `last_seq` as stored.
    pub fn advance_to(&mut self, last_seq: u64) {
        self.stored_up_to = self.stored_up_to.max(last_seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_overlaps_and_gaps() {
        let mut dedup = Dedup::new(10);
        assert_eq!(dedup.already_stored(11, 5), Ok(0));
        assert_eq!(dedup.already_stored(5, 3), Ok(3), "fully duplicate batch");
        assert_eq!(dedup.already_stored(8, 6), Ok(3), "overlapping batch");
        assert_eq!(
            dedup.already_stored(13, 1),
            Err(DedupError::Gap {
                expected: 11,
                got: 13
            })
        );
        dedup.advance_to(15);
        dedup.advance_to(12);
        assert_eq!(dedup.stored_up_to(), 15);
    }
}
