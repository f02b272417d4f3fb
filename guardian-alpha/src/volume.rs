//! Network volume: bytes each process moved to and from each remote address, per interval.
//!
//! Two sources feed it. The kernel program reports every connection it saw established (by a
//! process other than the agent) when it closes, with its final `tcp_sock` counters. Every
//! interval the agent also polls the counters of all open connections (sock_diag), so a
//! long-lived connection is reported while it lasts. Each byte is counted once: per socket
//! cookie the tracker remembers what it already accounted, and a close only adds the rest.
//!
//! A connection is polled into the account only once it has lived through a whole interval
//! (first seen in one poll, accounted from the next): a short transfer is reported entirely at
//! its close, in one interval, instead of being split at an interval boundary. Connections open
//! when the agent starts are accounted from that moment on, not with their earlier history.
//!
//! At the end of each interval the bytes are summed per (process, remote address), and a
//! `net_volume` event is emitted for each sum of which the bytes out or in reach
//! `[network] volume_min_bytes`; smaller sums are dropped with the interval.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use qsc_event::{NetVolume, ProcessInfo};

use crate::sockdiag::TcpSocket;

/// Who holds a polled socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    Process(Box<ProcessInfo>),
    /// The agent itself (its channel to the cortex): never reported.
    Agent,
    /// Nobody found (an orphaned socket, or its process exited): reported without a process.
    Unknown,
}

/// What the tracker knows of one open socket.
#[derive(Debug)]
struct SocketState {
    /// Bytes already accounted, out and in.
    acked: u64,
    received: u64,
    /// False until the socket has been seen in two polls.
    accounted: bool,
    owner: Option<Owner>,
}

/// Bytes of one (process, remote address) in the current interval.
#[derive(Debug, Default)]
struct Sum {
    bytes_out: u64,
    bytes_in: u64,
    process: Option<ProcessInfo>,
}

/// Per-interval accounting; see the module documentation.
#[derive(Debug)]
pub struct VolumeTracker {
    min_bytes: u64,
    sockets: HashMap<u64, SocketState>,
    sums: HashMap<(Option<u32>, IpAddr), Sum>,
    /// The first poll sets the starting point of connections already open.
    polled_once: bool,
}

impl VolumeTracker {
    /// A tracker that reports sums of at least `min_bytes` (out or in).
    pub fn new(min_bytes: u64) -> Self {
        VolumeTracker {
            min_bytes,
            sockets: HashMap::new(),
            sums: HashMap::new(),
            polled_once: false,
        }
    }

    fn add(&mut self, process: Option<ProcessInfo>, remote: IpAddr, out: u64, inbound: u64) {
        if out == 0 && inbound == 0 {
            return;
        }
        let sum = self
            .sums
            .entry((process.as_ref().map(|p| p.pid), remote))
            .or_default();
        sum.bytes_out = sum.bytes_out.saturating_add(out);
        sum.bytes_in = sum.bytes_in.saturating_add(inbound);
        if sum.process.is_none() {
            sum.process = process;
        }
    }

    /// A connection of `process` ended with these final counters (`cookie` 0: never polled).
    pub fn on_close(
        &mut self,
        process: ProcessInfo,
        remote: IpAddr,
        cookie: u64,
        bytes_acked: u64,
        bytes_received: u64,
    ) {
        let (acked, received) = match (cookie, self.sockets.remove(&cookie)) {
            (0, _) | (_, None) => (0, 0),
            (_, Some(state)) => (state.acked, state.received),
        };
        self.add(
            Some(process),
            remote,
            bytes_acked.saturating_sub(acked),
            bytes_received.saturating_sub(received),
        );
    }

    /// Accounts one poll of the open connections. `owner_of` is asked (once per socket, only
    /// for a socket that has something to report) who holds the socket with that inode.
    ///
    /// Call it only after the kernel's close records up to the poll were handled, so that a
    /// socket missing from the poll has been accounted by its close.
    pub fn on_poll(&mut self, polled: &[TcpSocket], mut owner_of: impl FnMut(&[u64]) -> OwnerMap) {
        let first = !self.polled_once;
        self.polled_once = true;
        let live: HashSet<u64> = polled.iter().map(|s| s.cookie).collect();
        self.sockets.retain(|cookie, _| live.contains(cookie));
        let mut due = Vec::new();
        for socket in polled {
            let state = self
                .sockets
                .entry(socket.cookie)
                .or_insert_with(|| SocketState {
                    acked: if first { socket.bytes_acked } else { 0 },
                    received: if first { socket.bytes_received } else { 0 },
                    accounted: first,
                    owner: None,
                });
            if !state.accounted {
                state.accounted = true;
                continue;
            }
            let out = socket.bytes_acked.saturating_sub(state.acked);
            let inbound = socket.bytes_received.saturating_sub(state.received);
            if out > 0 || inbound > 0 {
                due.push((socket, out, inbound));
            }
        }
        let unknown: Vec<u64> = due
            .iter()
            .filter(|(s, ..)| {
                self.sockets
                    .get(&s.cookie)
                    .is_some_and(|st| st.owner.is_none())
            })
            .map(|(s, ..)| s.inode)
            .collect();
        let mut owners = if unknown.is_empty() {
            OwnerMap::new()
        } else {
            owner_of(&unknown)
        };
        for (socket, out, inbound) in due {
            let Some(state) = self.sockets.get_mut(&socket.cookie) else {
                continue;
            };
            state.acked = socket.bytes_acked;
            state.received = socket.bytes_received;
            let owner = state
                .owner
                .get_or_insert_with(|| owners.remove(&socket.inode).unwrap_or(Owner::Unknown))
                .clone();
            match owner {
                Owner::Agent => {}
                Owner::Process(process) => {
                    self.add(Some(*process), socket.remote.ip(), out, inbound)
                }
                Owner::Unknown => self.add(None, socket.remote.ip(), out, inbound),
            }
        }
    }

    /// Ends the interval (of `interval_ms`): the sums that reach the threshold as events.
    pub fn flush(&mut self, interval_ms: u64) -> Vec<NetVolume> {
        let min = self.min_bytes;
        let mut volumes: Vec<NetVolume> = self
            .sums
            .drain()
            .filter(|(_, sum)| sum.bytes_out >= min || sum.bytes_in >= min)
            .map(|((_, remote_ip), sum)| NetVolume {
                process: sum.process,
                remote_ip,
                bytes_out: sum.bytes_out,
                bytes_in: sum.bytes_in,
                interval_ms,
            })
            .collect();
        volumes.sort_by_key(|v| std::cmp::Reverse(v.bytes_out.max(v.bytes_in)));
        volumes
    }
}

/// Owners found for socket inodes.
pub type OwnerMap = HashMap<u64, Owner>;

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            comm: format!("p{pid}").into(),
            ..ProcessInfo::default()
        }
    }

    fn socket(cookie: u64, remote: &str, acked: u64, received: u64) -> TcpSocket {
        TcpSocket {
            cookie,
            inode: cookie + 1000,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            bytes_acked: acked,
            bytes_received: received,
        }
    }

    fn owners(pid: u32) -> impl FnMut(&[u64]) -> OwnerMap {
        move |inodes| {
            inodes
                .iter()
                .map(|&i| (i, Owner::Process(Box::new(process(pid)))))
                .collect()
        }
    }

    const MB: u64 = 1_000_000;
    const REMOTE: &str = "198.51.100.9:443";

    fn ip() -> IpAddr {
        "198.51.100.9".parse().unwrap()
    }

    #[test]
    fn closes_are_summed_per_process_and_remote_and_thresholded() {
        let mut t = VolumeTracker::new(MB);
        t.on_close(process(10), ip(), 0, 600_000, 10);
        t.on_close(process(10), ip(), 0, 600_000, 10);
        t.on_close(process(11), ip(), 0, 900_000, 0);
        let volumes = t.flush(1000);
        assert_eq!(volumes.len(), 1);
        let v = &volumes[0];
        assert_eq!(
            (v.bytes_out, v.bytes_in, v.interval_ms),
            (1_200_000, 20, 1000)
        );
        assert_eq!(v.process.as_ref().map(|p| p.pid), Some(10));
        assert_eq!(v.remote_ip, ip());
        // Below-threshold sums end with their interval.
        assert!(t.flush(1000).is_empty());
    }

    #[test]
    fn inbound_volume_alone_reaches_the_threshold() {
        let mut t = VolumeTracker::new(MB);
        t.on_close(process(10), ip(), 0, 0, 2 * MB);
        assert_eq!(t.flush(1000)[0].bytes_in, 2 * MB);
    }

    #[test]
    fn connections_open_at_start_count_from_then_on() {
        let mut t = VolumeTracker::new(MB);
        t.on_poll(&[socket(1, REMOTE, 500 * MB, 0)], owners(10));
        assert!(t.flush(1000).is_empty());
        t.on_poll(&[socket(1, REMOTE, 502 * MB, 0)], owners(10));
        let volumes = t.flush(1000);
        assert_eq!(volumes[0].bytes_out, 2 * MB);
    }

    #[test]
    fn polls_and_the_close_count_each_byte_once() {
        let mut t = VolumeTracker::new(1);
        t.on_poll(&[], owners(10));
        // First seen: not accounted yet (a short transfer is left to its close).
        t.on_poll(&[socket(1, REMOTE, 3 * MB, 5)], owners(10));
        assert!(t.flush(1000).is_empty());
        // Lived through an interval: everything so far is reported.
        t.on_poll(&[socket(1, REMOTE, 4 * MB, 5)], owners(10));
        assert_eq!(t.flush(1000)[0].bytes_out, 4 * MB);
        t.on_poll(&[socket(1, REMOTE, 6 * MB, 5)], owners(10));
        assert_eq!(t.flush(1000)[0].bytes_out, 2 * MB);
        // The close adds only what the polls did not see.
        t.on_close(process(10), ip(), 1, 7 * MB, 5);
        let volumes = t.flush(1000);
        assert_eq!((volumes[0].bytes_out, volumes[0].bytes_in), (MB, 0));
    }

    #[test]
    fn a_transfer_seen_by_one_poll_is_reported_whole_at_its_close() {
        let mut t = VolumeTracker::new(MB);
        t.on_poll(&[], owners(10));
        t.on_poll(&[socket(5, REMOTE, 60 * MB, 0)], owners(10));
        t.on_close(process(10), ip(), 5, 150 * MB, 0);
        assert_eq!(t.flush(1000)[0].bytes_out, 150 * MB);
    }

    #[test]
    fn owners_are_looked_up_once_and_the_agent_is_never_reported() {
        let mut t = VolumeTracker::new(1);
        t.on_poll(
            &[socket(1, REMOTE, 0, 0), socket(2, REMOTE, 0, 0)],
            owners(0),
        );
        let mut lookups = 0;
        let mut owner_of = |inodes: &[u64]| {
            lookups += 1;
            inodes
                .iter()
                .map(|&i| {
                    let owner = if i == 1001 {
                        Owner::Agent
                    } else {
                        Owner::Process(Box::new(process(20)))
                    };
                    (i, owner)
                })
                .collect()
        };
        t.on_poll(
            &[socket(1, REMOTE, 9, 0), socket(2, REMOTE, 9, 0)],
            &mut owner_of,
        );
        t.on_poll(
            &[socket(1, REMOTE, 19, 0), socket(2, REMOTE, 19, 0)],
            &mut owner_of,
        );
        assert_eq!(lookups, 1);
        let volumes = t.flush(1000);
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].process.as_ref().map(|p| p.pid), Some(20));
        assert_eq!(volumes[0].bytes_out, 19);
    }

    #[test]
    fn vanished_sockets_are_forgotten() {
        let mut t = VolumeTracker::new(1);
        t.on_poll(
            &[socket(1, REMOTE, 10, 0), socket(2, REMOTE, 10, 0)],
            owners(10),
        );
        t.on_poll(&[socket(2, REMOTE, 10, 0)], owners(10));
        assert_eq!(t.sockets.keys().collect::<Vec<_>>(), [&2]);
    }
}
