//! Binary envelopes carried in transport messages. All integers are big-endian.
//!
//! ```text
//! agent -> cortex
//!   1 Events        first_seq u64 | count u32 | count × (len u32 | bytes)
//!   2 Lost          first_seq u64 | last_seq u64        (outbox overflow dropped these)
//!   3 CommandResult id u64 | status u8 | len u32 | bytes
//! cortex -> agent
//!   1 Ack           up_to_seq u64                        (everything <= up_to_seq is stored)
//!   2 Command       id u64 | len u32 | bytes
//! handshake message 2 payload: resume_after u64 (highest seq the cortex already stored)
//! ```

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("message is empty")]
    Empty,
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    #[error("message truncated while reading {what}")]
    Truncated { what: &'static str },
    #[error("{count} unexpected bytes after the message")]
    TrailingBytes { count: usize },
    #[error("events batch is empty")]
    EmptyBatch,
    #[error("sequence numbers overflow (first_seq {first_seq}, count {count})")]
    SeqOverflow { first_seq: u64, count: u64 },
    #[error("lost range {first_seq}..={last_seq} is empty or inverted")]
    BadLostRange { first_seq: u64, last_seq: u64 },
    #[error("unknown command status {0}")]
    UnknownStatus(u8),
}

/// Outcome of a command on the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandStatus {
    Succeeded = 0,
    Failed = 1,
    /// The agent refused it (unknown command, guardrail).
    Refused = 2,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AgentMessage<'a> {
    Events {
        first_seq: u64,
        events: Vec<&'a [u8]>,
    },
    Lost {
        first_seq: u64,
        last_seq: u64,
    },
    CommandResult {
        id: u64,
        status: CommandStatus,
        body: &'a [u8],
    },
}

#[derive(Debug, PartialEq, Eq)]
pub enum CortexMessage<'a> {
    Ack { up_to_seq: u64 },
    Command { id: u64, body: &'a [u8] },
}

const TAG_EVENTS: u8 = 1;
const TAG_LOST: u8 = 2;
const TAG_RESULT: u8 = 3;
const TAG_ACK: u8 = 1;
const TAG_COMMAND: u8 = 2;

/// Bytes an Events message needs besides the event bodies.
pub const EVENTS_HEADER_LEN: usize = 1 + 8 + 4;
pub const EVENT_OVERHEAD: usize = 4;

/// Appends an Events message to a buffer, event by event; the buffer is typically a transport
/// frame's own (see [`crate::transport::FrameWriter::send_with`]), so the events are copied
/// once, from the outbox straight into the frame that is sealed in place.
pub struct EventsEncoder<'a> {
    buf: &'a mut Vec<u8>,
    /// Where the message's count field is in `buf`.
    count_at: usize,
    count: u32,
}

impl<'a> EventsEncoder<'a> {
    /// Appends the header of an Events message whose first event has `first_seq`.
    pub fn start(buf: &'a mut Vec<u8>, first_seq: u64) -> Self {
        buf.push(TAG_EVENTS);
        buf.extend_from_slice(&first_seq.to_be_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_be_bytes());
        EventsEncoder {
            buf,
            count_at,
            count: 0,
        }
    }

    pub fn push(&mut self, event: &[u8]) {
        self.buf
            .extend_from_slice(&(event.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(event);
        self.count += 1;
    }

    /// Events pushed so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Writes the final event count into the header.
    pub fn finish(self) {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_be_bytes());
    }
}

/// Appends the Events message carrying `events`, numbered from `first_seq`, to `buf`.
pub fn encode_events<E: AsRef<[u8]>>(buf: &mut Vec<u8>, first_seq: u64, events: &[E]) {
    let mut encoder = EventsEncoder::start(buf, first_seq);
    for event in events {
        encoder.push(event.as_ref());
    }
    encoder.finish();
}

pub fn encode_lost(first_seq: u64, last_seq: u64) -> Vec<u8> {
    let mut out = vec![TAG_LOST];
    out.extend_from_slice(&first_seq.to_be_bytes());
    out.extend_from_slice(&last_seq.to_be_bytes());
    out
}

pub fn encode_command_result(id: u64, status: CommandStatus, body: &[u8]) -> Vec<u8> {
    let mut out = vec![TAG_RESULT];
    out.extend_from_slice(&id.to_be_bytes());
    out.push(status as u8);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn encode_ack(up_to_seq: u64) -> Vec<u8> {
    let mut out = vec![TAG_ACK];
    out.extend_from_slice(&up_to_seq.to_be_bytes());
    out
}

pub fn encode_command(id: u64, body: &[u8]) -> Vec<u8> {
    let mut out = vec![TAG_COMMAND];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

pub fn encode_resume(resume_after: u64) -> Vec<u8> {
    resume_after.to_be_bytes().to_vec()
}

pub fn decode_resume(payload: &[u8]) -> Result<u64, EnvelopeError> {
    let mut r = Reader { rest: payload };
    let value = r.u64("resume point")?;
    r.finish()?;
    Ok(value)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        if self.rest.len() < n {
            return Err(EnvelopeError::Truncated { what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], EnvelopeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, EnvelopeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, EnvelopeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, EnvelopeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn sized(&mut self, what: &'static str) -> Result<&'a [u8], EnvelopeError> {
        let len = self.u32(what)? as usize;
        self.bytes(len, what)
    }

    fn finish(self) -> Result<(), EnvelopeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(EnvelopeError::TrailingBytes {
                count: self.rest.len(),
            })
        }
    }
}

impl<'a> AgentMessage<'a> {
    pub fn decode(msg: &'a [u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader { rest: msg };
        let tag = r.u8("tag").map_err(|_| EnvelopeError::Empty)?;
        let decoded = match tag {
            TAG_EVENTS => {
                let first_seq = r.u64("first_seq")?;
                let count = r.u32("event count")?;
                if count == 0 {
                    return Err(EnvelopeError::EmptyBatch);
                }
                if first_seq == 0 || first_seq.checked_add(u64::from(count)).is_none() {
                    return Err(EnvelopeError::SeqOverflow {
                        first_seq,
                        count: u64::from(count),
                    });
                }
                // Each event needs at least its 4-byte length, which bounds the allocation.
                let plausible = (count as usize).min(r.rest.len() / EVENT_OVERHEAD);
                let mut events = Vec::with_capacity(plausible);
                for _ in 0..count {
                    events.push(r.sized("event")?);
                }
                AgentMessage::Events { first_seq, events }
            }
            TAG_LOST => {
                let first_seq = r.u64("first_seq")?;
                let last_seq = r.u64("last_seq")?;
                if first_seq == 0 || last_seq < first_seq {
                    return Err(EnvelopeError::BadLostRange {
                        first_seq,
                        last_seq,
                    });
                }
                AgentMessage::Lost {
                    first_seq,
                    last_seq,
                }
            }
            TAG_RESULT => {
                let id = r.u64("command id")?;
                let status = match r.u8("status")? {
                    0 => CommandStatus::Succeeded,
                    1 => CommandStatus::Failed,
                    2 => CommandStatus::Refused,
                    other => return Err(EnvelopeError::UnknownStatus(other)),
                };
                let body = r.sized("result body")?;
                AgentMessage::CommandResult { id, status, body }
            }
            other => return Err(EnvelopeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(decoded)
    }
}

impl<'a> CortexMessage<'a> {
    pub fn decode(msg: &'a [u8]) -> Result<Self, EnvelopeError> {
        let mut r = Reader { rest: msg };
        let tag = r.u8("tag").map_err(|_| EnvelopeError::Empty)?;
        let decoded = match tag {
            TAG_ACK => CortexMessage::Ack {
                up_to_seq: r.u64("up_to_seq")?,
            },
            TAG_COMMAND => {
                let id = r.u64("command id")?;
                let body = r.sized("command body")?;
                CortexMessage::Command { id, body }
            }
            other => return Err(EnvelopeError::UnknownTag(other)),
        };
        r.finish()?;
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let mut msg = Vec::new();
        let mut enc = EventsEncoder::start(&mut msg, 41);
        enc.push(b"a");
        enc.push(b"");
        enc.push(b"ccc");
        assert_eq!(enc.count(), 3);
        enc.finish();
        let mut batch = Vec::new();
        encode_events(&mut batch, 41, &[b"a".as_slice(), b"", b"ccc"]);
        assert_eq!(batch, msg);
        assert_eq!(
            AgentMessage::decode(&msg).unwrap(),
            AgentMessage::Events {
                first_seq: 41,
                events: vec![b"a".as_slice(), b"", b"ccc"]
            }
        );
        for cut in 1..msg.len() {
            assert!(AgentMessage::decode(&msg[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = msg.clone();
        long.push(0);
        assert_eq!(
            AgentMessage::decode(&long),
            Err(EnvelopeError::TrailingBytes { count: 1 })
        );
    }

    #[test]
    fn other_messages_round_trip() {
        assert_eq!(
            AgentMessage::decode(&encode_lost(3, 9)).unwrap(),
            AgentMessage::Lost {
                first_seq: 3,
                last_seq: 9
            }
        );
        assert_eq!(
            AgentMessage::decode(&encode_command_result(7, CommandStatus::Refused, b"no")).unwrap(),
            AgentMessage::CommandResult {
                id: 7,
                status: CommandStatus::Refused,
                body: b"no"
            }
        );
        assert_eq!(
            CortexMessage::decode(&encode_ack(12)).unwrap(),
            CortexMessage::Ack { up_to_seq: 12 }
        );
        assert_eq!(
            CortexMessage::decode(&encode_command(5, b"kill 42")).unwrap(),
            CortexMessage::Command {
                id: 5,
                body: b"kill 42"
            }
        );
        assert_eq!(decode_resume(&encode_resume(99)), Ok(99));
    }

    #[test]
    fn hostile_messages_are_named_errors() {
        assert_eq!(AgentMessage::decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(
            AgentMessage::decode(&[9]),
            Err(EnvelopeError::UnknownTag(9))
        );
        assert_eq!(
            AgentMessage::decode(&encode_lost(9, 3)),
            Err(EnvelopeError::BadLostRange {
                first_seq: 9,
                last_seq: 3
            })
        );
        let mut huge_count = vec![TAG_EVENTS];
        huge_count.extend_from_slice(&1u64.to_be_bytes());
        huge_count.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            AgentMessage::decode(&huge_count),
            Err(EnvelopeError::Truncated { what: "event" })
        );
        let mut overflow = vec![TAG_EVENTS];
        overflow.extend_from_slice(&u64::MAX.to_be_bytes());
        overflow.extend_from_slice(&1u32.to_be_bytes());
        assert!(matches!(
            AgentMessage::decode(&overflow),
            Err(EnvelopeError::SeqOverflow { .. })
        ));
        assert_eq!(
            decode_resume(&[1, 2]),
            Err(EnvelopeError::Truncated {
                what: "resume point"
            })
        );
    }
}
