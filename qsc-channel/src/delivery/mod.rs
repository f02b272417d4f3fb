//! Exactly-once delivery of agent events to the cortex, and commands back.
//!
//! * Every event gets a gap-free sequence number when the agent appends it to its [`Outbox`].
//! * The [`Client`] streams the outbox in `Events` batches; the cortex [`Session`] stores new
//!   events through an [`EventSink`] and sends `Ack{up_to_seq}` once they are durable (it reads
//!   the next batches meanwhile); the outbox deletes what was acknowledged.
//! * After a reconnect the cortex states what it has (handshake payload) and the client resends
//!   the rest; [`Dedup`] drops anything already stored, so each event is stored once.
//! * Commands travel cortex → agent on the same authenticated connection and their results
//!   come back to [`EventSink::command_result`].

mod client;
mod dedup;
pub mod envelope;
mod outbox;
mod server;

pub use client::{Client, ClientConfig, ClientError, CommandHandler, OutboxHandle, UnaskedResult};
pub use dedup::{Dedup, DedupError};
pub use envelope::CommandStatus;
pub use outbox::{
    Appended, DropCounters, FsyncPolicy, Outbox, OutboxConfig, OutboxError, OverflowPolicy,
    PendingSync, ReadBatch,
};
pub use server::{
    AgentIdentity, CommandSender, Durable, EventSink, MAX_UNACKED_BATCHES, ServerConfig,
    ServerError, Session, SessionClosed, SessionCloser, SinkError, accept,
};
