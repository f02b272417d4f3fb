//! The agent's durable outbox: append-only segment files, bounded in bytes.
//!
//! Layout in the outbox directory:
//!
//! * `seg-<first_seq, 20 digits>.qob`: records `len u32 LE | seq u64 LE | crc32 u32 LE | bytes`,
//!   the CRC covering `seq || bytes`. Sequence numbers are gap-free across segments.
//! * `drops.state`: the drop counters, rewritten atomically (temp file + rename) when they change.
//!
//! The newest segment is the active one; it is never deleted, so the next sequence number
//! survives a restart even when everything was acknowledged. On open, every segment is scanned
//! and cut at the first torn or corrupt record (a crash in the middle of an append).
//!
//! Durability (`fsync` policy): with [`FsyncPolicy::Always`] an append returns only after
//! `fdatasync`, so events survive power loss; with [`FsyncPolicy::Never`] they survive a crash
//! of the agent process (the kernel holds them) but not of the machine.
//! [`Outbox::append_batch_unsynced`] hands that `fdatasync` to the caller as a [`PendingSync`],
//! so it can run without the outbox's lock while the sender already reads and sends the events
//! (a machine crash before the sync then loses no more than before: what was sent and stored by
//! the cortex is there, and the outbox renumbers after the cortex's position on reconnect).
//!
//! Overflow: when an append would push the total size over `max_bytes`, [`OverflowPolicy`]
//! decides. `drop_newest` refuses the new event (it gets no sequence number, so no gap);
//! `drop_oldest` deletes the oldest whole segment, and the reader reports the missing range as
//! [`ReadBatch::Lost`] so the cortex records the loss. Both are counted in [`DropCounters`].

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

const RECORD_HEADER_LEN: u64 = 16;
const SEGMENT_PREFIX: &str = "seg-";
const SEGMENT_SUFFIX: &str = ".qob";
const DROPS_FILE: &str = "drops.state";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverflowPolicy {
    DropOldest,
    DropNewest,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    Always,
    Never,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxConfig {
    pub dir: PathBuf,
    /// Upper bound on the bytes of all segment files.
    pub max_bytes: u64,
    /// A segment is closed and a new one started past this size.
    pub segment_bytes: u64,
    pub overflow: OverflowPolicy,
    pub fsync: FsyncPolicy,
}

impl OutboxConfig {
    /// Sensible defaults: 256 MiB bound, 16 MiB segments, drop_oldest, fsync always.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        OutboxConfig {
            dir: dir.into(),
            max_bytes: 256 << 20,
            segment_bytes: 16 << 20,
            overflow: OverflowPolicy::DropOldest,
            fsync: FsyncPolicy::Always,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {action} failed for {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("outbox config invalid: {0}")]
    Config(String),
    #[error("event of {len} bytes can never fit in an outbox of {max_bytes} bytes")]
    EventTooLarge { len: usize, max_bytes: u64 },
    #[error("drop counter file {path} is malformed")]
    MalformedDrops { path: PathBuf },
}

/// How many events overflow discarded, since the outbox was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropCounters {
    /// Stored, unacknowledged events deleted to make room (`drop_oldest`).
    pub dropped_oldest: u64,
    /// New events refused (`drop_newest`).
    pub dropped_newest: u64,
}

/// The `fdatasync` an append still owes ([`Outbox::append_batch_unsynced`]).
#[must_use = "the appended events are durable only after `wait`"]
pub struct PendingSync {
    file: File,
    path: PathBuf,
}

impl PendingSync {
    /// Makes the appended events durable.
    pub fn wait(self) -> Result<(), OutboxError> {
        self.file
            .sync_data()
            .map_err(io_err("sync segment", &self.path))
    }
}

/// The fate of one appended event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Appended {
    Stored { seq: u64 },
    Dropped,
}

/// What the next read from a sequence number yields.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadBatch {
    /// Nothing at or after the requested sequence number yet.
    Empty,
    /// These sequence numbers were dropped by overflow and will never be delivered.
    Lost { first_seq: u64, last_seq: u64 },
    /// Consecutive events starting at `first_seq`.
    Events {
        first_seq: u64,
        events: Vec<Vec<u8>>,
    },
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// One past the last record's seq.
    end_seq: u64,
    bytes: u64,
    path: PathBuf,
}

struct ReadCursor {
    segment_first_seq: u64,
    next_seq: u64,
    reader: BufReader<File>,
}

pub struct Outbox {
    config: OutboxConfig,
    segments: VecDeque<Segment>,
    active: File,
    total_bytes: u64,
    acked: u64,
    drops: DropCounters,
    cursor: Option<ReadCursor>,
    write_buf: Vec<u8>,
}

/// Deletes a segment file; its blocks are freed on another thread, since freeing 16 MiB can
/// wait for the device (5 ms measured on an idle disk mounted with `discard`) and the caller
/// holds the outbox, which the agent's events wait for.
fn delete_segment(path: &Path) -> Result<(), OutboxError> {
    qsc_durable::remove_file_in_background(path)
        .map(drop)
        .map_err(io_err("delete segment", path))
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError {
    let path = path.to_path_buf();
    move |source| OutboxError::Io {
        action,
        path,
        source,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_seq:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix(SEGMENT_PREFIX)?
        .strip_suffix(SEGMENT_SUFFIX)?
        .parse()
        .ok()
}

fn record_crc(seq: u64, data: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(data);
    hasher.finalize()
}

fn encode_record(seq: u64, data: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&record_crc(seq, data).to_le_bytes());
    out.extend_from_slice(data);
}

/// Reads one record; `Ok(None)` at a clean end, a torn tail, or a corrupt record.
fn read_record(
    reader: &mut impl Read,
    expected_seq: u64,
    data: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    let mut header = [0u8; RECORD_HEADER_LEN as usize];
    if let Err(e) = reader.read_exact(&mut header) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&header[4..12]);
    let seq = u64::from_le_bytes(seq_bytes);
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    if seq != expected_seq {
        return Ok(None);
    }
    data.clear();
    data.resize(len, 0);
    if let Err(e) = reader.read_exact(data) {
        return if e.kind() == std::io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    if record_crc(seq, data) != crc {
        return Ok(None);
    }
    Ok(Some(seq))
}

/// Scans a segment, truncating it after the last valid record.
fn recover_segment(path: &Path, first_seq: u64) -> Result<Segment, OutboxError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    let file_len = file.metadata().map_err(io_err("stat segment", path))?.len();
    let mut reader = BufReader::new(&file);
    let mut end_seq = first_seq;
    let mut valid_bytes = 0u64;
    let mut data = Vec::new();
    while read_record(&mut reader, end_seq, &mut data)
        .map_err(io_err("read segment", path))?
        .is_some()
    {
        end_seq += 1;
        valid_bytes += RECORD_HEADER_LEN + data.len() as u64;
    }
    if valid_bytes < file_len {
        tracing::warn!(
            segment = %path.display(),
            kept_bytes = valid_bytes,
            cut_bytes = file_len - valid_bytes,
            "outbox segment had a torn or corrupt tail; truncated"
        );
        file.set_len(valid_bytes)
            .map_err(io_err("truncate segment", path))?;
        file.sync_all().map_err(io_err("sync segment", path))?;
    }
    Ok(Segment {
        first_seq,
        end_seq,
        bytes: valid_bytes,
        path: path.to_path_buf(),
    })
}

fn open_append(path: &Path) -> Result<File, OutboxError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open segment for append", path))
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

impl Outbox {
    /// Opens (creating if needed) the outbox directory and recovers its segments.
    pub fn open(config: OutboxConfig) -> Result<Self, OutboxError> {
        if config.segment_bytes == 0 || config.max_bytes < config.segment_bytes {
            return Err(OutboxError::Config(format!(
                "need 0 < segment_bytes ({}) <= max_bytes ({})",
                config.segment_bytes, config.max_bytes
            )));
        }
        fs::create_dir_all(&config.dir).map_err(io_err("create directory", &config.dir))?;
        let mut firsts: Vec<u64> = fs::read_dir(&config.dir)
            .map_err(io_err("list directory", &config.dir))?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| parse_segment_name(&entry.file_name().to_string_lossy()))
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let segment = recover_segment(&config.dir.join(segment_name(first)), first)?;
            segments.push_back(segment);
        }
        if segments.is_empty() {
            let path = config.dir.join(segment_name(1));
            segments.push_back(Segment {
                first_seq: 1,
                end_seq: 1,
                bytes: 0,
                path,
            });
        }
        let last_path = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let active = open_append(&last_path)?;
        let total_bytes = segments.iter().map(|s| s.bytes).sum();
        let drops = read_drops(&config.dir)?;
        Ok(Outbox {
            config,
            segments,
            active,
            total_bytes,
            acked: 0,
            drops,
            cursor: None,
            write_buf: Vec::new(),
        })
    }

    /// The sequence number the next stored event will get.
    pub fn next_seq(&self) -> u64 {
        self.segments.back().map_or(1, |s| s.end_seq)
    }

    pub fn drops(&self) -> DropCounters {
        self.drops
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Events stored and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        let first = self.first_available_seq().max(self.acked + 1);
        self.next_seq().saturating_sub(first)
    }

    fn first_available_seq(&self) -> u64 {
        self.segments
            .front()
            .map_or_else(|| self.next_seq(), |s| s.first_seq)
    }

    /// Appends events, assigning consecutive sequence numbers, and applies the overflow policy.
    pub fn append_batch<E: AsRef<[u8]>>(
        &mut self,
        events: &[E],
    ) -> Result<Vec<Appended>, OutboxError> {
        let (appended, sync) = self.append_batch_unsynced(events)?;
        if let Some(sync) = sync {
            sync.wait()?;
        }
        Ok(appended)
    }

    /// [`Outbox::append_batch`] that leaves the final `fdatasync` (policy `always`) to the
    /// caller, who may run it after releasing the outbox; segments closed during the append
    /// are synced here.
    pub fn append_batch_unsynced<E: AsRef<[u8]>>(
        &mut self,
        events: &[E],
    ) -> Result<(Vec<Appended>, Option<PendingSync>), OutboxError> {
        let drops_before = self.drops;
        let mut results = Vec::with_capacity(events.len());
        self.write_buf.clear();
        for event in events {
            let data = event.as_ref();
            let record_len = RECORD_HEADER_LEN + data.len() as u64;
            if record_len > self.config.segment_bytes || data.len() > u32::MAX as usize {
                return Err(OutboxError::EventTooLarge {
                    len: data.len(),
                    max_bytes: self.config.segment_bytes,
                });
            }
            if !self.make_room(record_len)? {
                self.drops.dropped_newest += 1;
                results.push(Appended::Dropped);
                continue;
            }
            if self.active_segment_bytes() + self.write_buf.len() as u64 + record_len
                > self.config.segment_bytes
            {
                self.flush_writes()?;
                self.rotate()?;
            }
            let seq = self.next_seq();
            encode_record(seq, data, &mut self.write_buf);
            if let Some(active) = self.segments.back_mut() {
                active.end_seq += 1;
            }
            self.total_bytes += record_len;
            results.push(Appended::Stored { seq });
        }
        let wrote = self.write_buffered()?;
        if self.drops != drops_before {
            write_drops(&self.config.dir, self.drops)?;
        }
        let sync = if wrote && self.config.fsync == FsyncPolicy::Always {
            let path = self.active_path();
            let file = self
                .active
                .try_clone()
                .map_err(io_err("duplicate segment handle", &path))?;
            Some(PendingSync { file, path })
        } else {
            None
        };
        Ok((results, sync))
    }

    fn active_path(&self) -> PathBuf {
        self.segments
            .back()
            .map(|s| s.path.clone())
            .unwrap_or_default()
    }

    fn active_segment_bytes(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.bytes)
    }

    /// Frees space for `record_len` bytes per the policy; false means drop the new event.
    fn make_room(&mut self, record_len: u64) -> Result<bool, OutboxError> {
        while self.total_bytes + record_len > self.config.max_bytes {
            match self.config.overflow {
                OverflowPolicy::DropNewest => return Ok(false),
                OverflowPolicy::DropOldest => {
                    self.flush_writes()?;
                    if self.segments.len() == 1 {
                        self.rotate()?;
                    }
                    self.delete_oldest_segment()?;
                }
            }
        }
        Ok(true)
    }

    fn delete_oldest_segment(&mut self) -> Result<(), OutboxError> {
        let Some(oldest) = self.segments.pop_front() else {
            return Ok(());
        };
        let unacked_from = oldest.first_seq.max(self.acked + 1);
        self.drops.dropped_oldest += oldest.end_seq.saturating_sub(unacked_from);
        self.total_bytes -= oldest.bytes;
        delete_segment(&oldest.path)
    }

    /// Writes buffered records to the active segment (and fsyncs per policy).
    fn flush_writes(&mut self) -> Result<(), OutboxError> {
        if self.write_buffered()? && self.config.fsync == FsyncPolicy::Always {
            let path = self.active_path();
            self.active
                .sync_data()
                .map_err(io_err("sync segment", &path))?;
        }
        Ok(())
    }

    /// Writes buffered records to the active segment, without syncing; false if none.
    fn write_buffered(&mut self) -> Result<bool, OutboxError> {
        if self.write_buf.is_empty() {
            return Ok(false);
        }
        let path = self.active_path();
        self.active
            .write_all(&self.write_buf)
            .map_err(io_err("append to segment", &path))?;
        if let Some(active) = self.segments.back_mut() {
            active.bytes += self.write_buf.len() as u64;
        }
        self.write_buf.clear();
        Ok(true)
    }

    /// Starts a new, empty active segment at the next sequence number.
    fn rotate(&mut self) -> Result<(), OutboxError> {
        self.start_segment_at(self.next_seq())
    }

    fn start_segment_at(&mut self, first_seq: u64) -> Result<(), OutboxError> {
        let path = self.config.dir.join(segment_name(first_seq));
        self.active = open_append(&path)?;
        sync_dir(&self.config.dir)?;
        self.segments.push_back(Segment {
            first_seq,
            end_seq: first_seq,
            bytes: 0,
            path,
        });
        Ok(())
    }

    /// Records that the cortex stored everything up to `up_to_seq` and deletes fully
    /// acknowledged segments (never the active one). If the cortex is ahead of this outbox
    /// (its directory was lost), numbering continues after `up_to_seq` so nothing new is
    /// mistaken for a duplicate.
    pub fn acknowledge(&mut self, up_to_seq: u64) -> Result<(), OutboxError> {
        self.acked = self.acked.max(up_to_seq);
        if self.acked >= self.next_seq() {
            tracing::warn!(
                cortex_has = self.acked,
                outbox_next = self.next_seq(),
                "cortex is ahead of the outbox; continuing numbering after its position"
            );
            self.start_segment_at(self.acked + 1)?;
        }
        while self.segments.len() > 1
            && self
                .segments
                .front()
                .is_some_and(|s| s.end_seq <= self.acked + 1)
        {
            if let Some(done) = self.segments.pop_front() {
                self.total_bytes -= done.bytes;
                delete_segment(&done.path)?;
            }
        }
        Ok(())
    }

    /// Reads up to `max_events` / about `max_bytes` events starting at `from_seq`.
    pub fn read(
        &mut self,
        from_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<ReadBatch, OutboxError> {
        let first_available = self.first_available_seq();
        if from_seq < first_available {
            return Ok(ReadBatch::Lost {
                first_seq: from_seq,
                last_seq: first_available - 1,
            });
        }
        if from_seq >= self.next_seq() {
            return Ok(ReadBatch::Empty);
        }
        let mut cursor = match self.cursor.take() {
            Some(c) if c.next_seq == from_seq && self.has_segment(c.segment_first_seq) => c,
            _ => self.seek(from_seq)?,
        };
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut data = Vec::new();
        let mut cursor_valid = true;
        while events.len() < max_events && bytes < max_bytes && cursor.next_seq < self.next_seq() {
            let seg_path = self.config.dir.join(segment_name(cursor.segment_first_seq));
            let got = read_record(&mut cursor.reader, cursor.next_seq, &mut data)
                .map_err(io_err("read segment", &seg_path))?;
            match got {
                Some(_) => {
                    bytes += data.len();
                    events.push(std::mem::take(&mut data));
                    cursor.next_seq += 1;
                }
                None => match self.segment_starting_at(cursor.next_seq) {
                    Some(path) => {
                        let file = File::open(&path).map_err(io_err("open segment", &path))?;
                        cursor.segment_first_seq = cursor.next_seq;
                        cursor.reader = BufReader::new(file);
                    }
                    None => {
                        cursor_valid = false;
                        break;
                    }
                },
            }
        }
        if cursor_valid {
            self.cursor = Some(cursor);
        }
        if events.is_empty() {
            return Ok(ReadBatch::Empty);
        }
        Ok(ReadBatch::Events {
            first_seq: from_seq,
            events,
        })
    }

    fn has_segment(&self, first_seq: u64) -> bool {
        self.segments.iter().any(|s| s.first_seq == first_seq)
    }

    fn segment_starting_at(&self, seq: u64) -> Option<PathBuf> {
        self.segments
            .iter()
            .find(|s| s.first_seq == seq && s.end_seq > seq)
            .map(|s| s.path.clone())
    }

    /// Positions a new cursor at `seq` by scanning its segment from the start.
    fn seek(&self, seq: u64) -> Result<ReadCursor, OutboxError> {
        let segment = self
            .segments
            .iter()
            .rev()
            .find(|s| s.first_seq <= seq)
            .ok_or_else(|| OutboxError::Config(format!("no segment holds seq {seq}")))?;
        let mut file = File::open(&segment.path).map_err(io_err("open segment", &segment.path))?;
        file.seek(SeekFrom::Start(0))
            .map_err(io_err("seek segment", &segment.path))?;
        let mut reader = BufReader::new(file);
        let mut data = Vec::new();
        let mut next = segment.first_seq;
        while next < seq {
            if read_record(&mut reader, next, &mut data)
                .map_err(io_err("read segment", &segment.path))?
                .is_none()
            {
                break;
            }
            next += 1;
        }
        Ok(ReadCursor {
            segment_first_seq: segment.first_seq,
            next_seq: next,
            reader,
        })
    }
}

fn read_drops(dir: &Path) -> Result<DropCounters, OutboxError> {
    let path = dir.join(DROPS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DropCounters::default()),
        Err(e) => return Err(io_err("read", &path)(e)),
    };
    let malformed = || OutboxError::MalformedDrops { path: path.clone() };
    let mut counters = DropCounters::default();
    for line in text.lines() {
        let (key, value) = line.split_once(' ').ok_or_else(malformed)?;
        let value: u64 = value.parse().map_err(|_| malformed())?;
        match key {
            "dropped_oldest" => counters.dropped_oldest = value,
            "dropped_newest" => counters.dropped_newest = value,
            _ => return Err(malformed()),
        }
    }
    Ok(counters)
}

fn write_drops(dir: &Path, counters: DropCounters) -> Result<(), OutboxError> {
    let path = dir.join(DROPS_FILE);
    let tmp = dir.join(format!("{DROPS_FILE}.tmp"));
    let text = format!(
        "dropped_oldest {}\ndropped_newest {}\n",
        counters.dropped_oldest, counters.dropped_newest
    );
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(text.as_bytes())
        .map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        overflow: OverflowPolicy,
    ) -> OutboxConfig {
        OutboxConfig {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            overflow,
            fsync: FsyncPolicy::Never,
        }
    }

    fn events(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
        range
            .map(|i| format!("event-{i:04}").into_bytes())
            .collect()
    }

    fn read_all(outbox: &mut Outbox, mut from: u64) -> Vec<ReadBatch> {
        let mut out = Vec::new();
        loop {
            match outbox.read(from, 7, 1 << 20).unwrap() {
                ReadBatch::Empty => return out,
                ReadBatch::Lost {
                    first_seq,
                    last_seq,
                } => {
                    from = last_seq + 1;
                    out.push(ReadBatch::Lost {
                        first_seq,
                        last_seq,
                    });
                }
                ReadBatch::Events { first_seq, events } => {
                    from = first_seq + events.len() as u64;
                    out.push(ReadBatch::Events { first_seq, events });
                }
            }
        }
    }

    fn flatten(batches: &[ReadBatch]) -> Vec<Vec<u8>> {
        batches
            .iter()
            .flat_map(|b| match b {
                ReadBatch::Events { events, .. } => events.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    #[test]
    fn an_unsynced_append_is_readable_at_once_and_owes_its_sync_only_when_always() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), 1 << 20, 1 << 16, OverflowPolicy::DropOldest);
        cfg.fsync = FsyncPolicy::Always;
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        let (appended, sync) = outbox.append_batch_unsynced(&events(1..4)).unwrap();
        assert_eq!(appended.len(), 3);
        assert_eq!(flatten(&read_all(&mut outbox, 1)), events(1..4));
        sync.expect("policy always owes a sync").wait().unwrap();
        let (_, none) = outbox
            .append_batch_unsynced(&Vec::<Vec<u8>>::new())
            .unwrap();
        assert!(none.is_none(), "nothing written, nothing to sync");
        drop(outbox);

        cfg.fsync = FsyncPolicy::Never;
        let mut outbox = Outbox::open(cfg).unwrap();
        let (appended, sync) = outbox.append_batch_unsynced(&events(4..6)).unwrap();
        assert_eq!(appended[1], Appended::Stored { seq: 5 });
        assert!(sync.is_none());
    }

    #[test]
    fn append_read_across_segments_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 200, OverflowPolicy::DropNewest);
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        let appended = outbox.append_batch(&events(1..51)).unwrap();
        assert_eq!(appended[0], Appended::Stored { seq: 1 });
        assert_eq!(appended[49], Appended::Stored { seq: 50 });
        assert!(outbox.segments.len() > 3);
        assert_eq!(flatten(&read_all(&mut outbox, 1)), events(1..51));
        assert_eq!(flatten(&read_all(&mut outbox, 20)), events(20..51));
        drop(outbox);

        let mut reopened = Outbox::open(cfg).unwrap();
        assert_eq!(reopened.next_seq(), 51);
        assert_eq!(flatten(&read_all(&mut reopened, 1)), events(1..51));
    }

    #[test]
    fn acknowledge_deletes_segments_but_keeps_numbering() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 200, OverflowPolicy::DropNewest);
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        outbox.append_batch(&events(1..51)).unwrap();
        outbox.acknowledge(50).unwrap();
        assert_eq!(outbox.segments.len(), 1);
        assert_eq!(outbox.unacked(), 0);
        drop(outbox);
        let mut reopened = Outbox::open(cfg).unwrap();
        assert_eq!(reopened.next_seq(), 51);
        assert_eq!(
            reopened.append_batch(&[b"x"]).unwrap(),
            vec![Appended::Stored { seq: 51 }]
        );
    }

    #[test]
    fn torn_tail_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 1 << 20, 1 << 16, OverflowPolicy::DropNewest);
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        outbox.append_batch(&events(1..11)).unwrap();
        let path = outbox.segments[0].path.clone();
        drop(outbox);
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        // A half-written record 11: header claims 100 bytes, only 3 present.
        file.write_all(&100u32.to_le_bytes()).unwrap();
        file.write_all(&11u64.to_le_bytes()).unwrap();
        file.write_all(&[0, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(file);
        let mut reopened = Outbox::open(cfg).unwrap();
        assert_eq!(reopened.next_seq(), 11);
        assert_eq!(
            reopened.append_batch(&[b"new"]).unwrap(),
            vec![Appended::Stored { seq: 11 }]
        );
        let mut expected = events(1..11);
        expected.push(b"new".to_vec());
        assert_eq!(flatten(&read_all(&mut reopened, 1)), expected);
    }

    #[test]
    fn drop_newest_refuses_and_counts_without_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 300, 100, OverflowPolicy::DropNewest);
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        let results = outbox.append_batch(&events(1..31)).unwrap();
        let stored = results
            .iter()
            .filter(|r| matches!(r, Appended::Stored { .. }))
            .count() as u64;
        assert!(stored < 30);
        assert_eq!(outbox.drops().dropped_newest, 30 - stored);
        assert!(outbox.total_bytes() <= 300);
        assert_eq!(flatten(&read_all(&mut outbox, 1)), events(1..stored + 1));
        drop(outbox);
        assert_eq!(
            Outbox::open(cfg).unwrap().drops().dropped_newest,
            30 - stored
        );
    }

    #[test]
    fn drop_oldest_counts_and_reports_the_lost_range() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 300, 100, OverflowPolicy::DropOldest);
        let mut outbox = Outbox::open(cfg.clone()).unwrap();
        outbox.append_batch(&events(1..31)).unwrap();
        assert!(outbox.total_bytes() <= 300);
        let dropped = outbox.drops().dropped_oldest;
        assert!(dropped > 0);
        let batches = read_all(&mut outbox, 1);
        assert_eq!(
            batches[0],
            ReadBatch::Lost {
                first_seq: 1,
                last_seq: dropped
            }
        );
        assert_eq!(flatten(&batches), events(dropped + 1..31));
        drop(outbox);
        assert_eq!(Outbox::open(cfg).unwrap().drops().dropped_oldest, dropped);
    }

    #[test]
    fn acked_events_are_not_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), 300, 100, OverflowPolicy::DropOldest);
        let mut outbox = Outbox::open(cfg).unwrap();
        outbox.append_batch(&events(1..6)).unwrap();
        outbox.acknowledge(5).unwrap();
        outbox.append_batch(&events(6..31)).unwrap();
        let batches = read_all(&mut outbox, 6);
        let lost: u64 = batches
            .iter()
            .map(|b| match b {
                ReadBatch::Lost {
                    first_seq,
                    last_seq,
                } => last_seq - first_seq + 1,
                _ => 0,
            })
            .sum();
        assert_eq!(lost, outbox.drops().dropped_oldest);
    }

    #[test]
    fn cortex_ahead_of_outbox_moves_numbering_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = Outbox::open(config(
            dir.path(),
            1 << 20,
            1 << 16,
            OverflowPolicy::DropNewest,
        ))
        .unwrap();
        outbox.acknowledge(500).unwrap();
        assert_eq!(
            outbox.append_batch(&[b"x"]).unwrap(),
            vec![Appended::Stored { seq: 501 }]
        );
    }

    #[test]
    fn rejects_bad_config_and_huge_events() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Outbox::open(config(dir.path(), 10, 100, OverflowPolicy::DropNewest)),
            Err(OutboxError::Config(_))
        ));
        let mut outbox =
            Outbox::open(config(dir.path(), 1000, 100, OverflowPolicy::DropNewest)).unwrap();
        assert!(matches!(
            outbox.append_batch(&[vec![0u8; 200]]),
            Err(OutboxError::EventTooLarge { len: 200, .. })
        ));
    }
}
