//! Channel benchmark: handshake latency (classic vs ML-KEM hybrid) and streaming throughput of
//! the encrypted transport against a plain-TCP baseline carrying the same envelopes, over
//! loopback, in one run, modes interleaved over several rounds.
//!
//! Run with `cargo bench -p qsc-channel --bench channel`. Writes `target/bench/channel.json`.
//! Measures the transport and envelope layers (framing, ChaCha20-Poly1305, batching, decode);
//! the agent's disk outbox and the cortex's sink are outside the measured path.

use std::time::{Duration, Instant};

use qsc_channel::delivery::envelope::{AgentMessage, EventsEncoder};
use qsc_channel::handshake;
use qsc_channel::keys::{AgentEntry, AllowList, StaticKeypair};
use qsc_channel::noise::{CipherState, HandshakeMode};
use qsc_channel::transport::{FrameReader, FrameWriter, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;

const ROUNDS: usize = 5;
const HANDSHAKES_PER_ROUND: usize = 40;
const SMALL_EVENT: usize = 200;
const SMALL_EVENTS_PER_ROUND: usize = 1_000_000;
const SMALL_PER_FRAME: usize = 2_000;
const LARGE_EVENT: usize = 16 * 1024;
const LARGE_EVENTS_PER_ROUND: usize = 40_000;
const LARGE_PER_FRAME: usize = 32;

struct Keys {
    agent: StaticKeypair,
    cortex: StaticKeypair,
    allow: AllowList,
}

fn keys() -> Keys {
    let agent = StaticKeypair::generate();
    let cortex = StaticKeypair::generate();
    let allow = AllowList::new(vec![AgentEntry {
        host_id: "bench".into(),
        class: "bench".into(),
        public_key: agent.public(),
        revoked: false,
    }]);
    Keys {
        agent,
        cortex,
        allow,
    }
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let client = client.unwrap();
    let server = server.unwrap().0;
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    (client, server)
}

/// One full handshake over a fresh loopback connection, connect included.
async fn handshake_once(keys: &Keys, mode: HandshakeMode) -> Duration {
    let start = Instant::now();
    let (mut client, mut server) = tcp_pair().await;
    let cortex_key = keys.cortex.public();
    let (agent_side, cortex_side) = tokio::join!(
        handshake::initiate(&mut client, mode, &keys.agent, &cortex_key, &[]),
        handshake::respond(
            &mut server,
            &keys.cortex,
            false,
            |key| keys.allow.authorize(key).cloned(),
            |_| 0u64.to_be_bytes().to_vec(),
        )
    );
    agent_side.unwrap();
    cortex_side.unwrap();
    start.elapsed()
}

/// A handshaken connection: the agent's writer, and the cortex's end as a std stream plus its
/// receive cipher, to be moved onto the cortex runtime.
async fn secure_pair(
    keys: &Keys,
) -> (
    FrameWriter<OwnedWriteHalf>,
    std::net::TcpStream,
    CipherState,
) {
    let (mut client, mut server) = tcp_pair().await;
    let cortex_key = keys.cortex.public();
    let (agent_side, cortex_side) = tokio::join!(
        handshake::initiate(
            &mut client,
            HandshakeMode::Hybrid,
            &keys.agent,
            &cortex_key,
            &[]
        ),
        handshake::respond(
            &mut server,
            &keys.cortex,
            true,
            |key| keys.allow.authorize(key).cloned(),
            |_| 0u64.to_be_bytes().to_vec(),
        )
    );
    let (agent_keys, _) = agent_side.unwrap();
    let accepted = cortex_side.unwrap();
    let config = TransportConfig::default();
    let writer = FrameWriter::new(client.into_split().1, agent_keys.send, config);
    (writer, server.into_std().unwrap(), accepted.keys.recv)
}

fn count_events(message: &[u8]) -> usize {
    match AgentMessage::decode(message).unwrap() {
        AgentMessage::Events { events, .. } => events.len(),
        other => panic!("unexpected {other:?}"),
    }
}

/// Sends `total` events of `size` bytes, `per_frame` per Events message; returns elapsed time
/// until the receiver decoded the last one.
async fn stream_secure(
    keys: &Keys,
    cortex: &Handle,
    size: usize,
    total: usize,
    per_frame: usize,
) -> Duration {
    let (mut writer, server, cipher) = secure_pair(keys).await;
    let receiver = cortex.spawn(async move {
        let server = TcpStream::from_std(server).unwrap();
        let mut reader = FrameReader::new(server, cipher, &TransportConfig::default());
        let mut seen = 0;
        while seen < total {
            seen += count_events(reader.recv().await.unwrap());
        }
    });
    let start = Instant::now();
    let payload = vec![0xa5u8; size];
    let mut encoder = EventsEncoder::new();
    let mut sent = 0;
    while sent < total {
        encoder.start(sent as u64 + 1);
        let n = per_frame.min(total - sent);
        for _ in 0..n {
            encoder.push(&payload);
        }
        writer.send(encoder.finish()).await.unwrap();
        sent += n;
    }
    receiver.await.unwrap();
    start.elapsed()
}

/// The same envelopes with only a u32 length prefix over plain TCP.
async fn stream_plain(cortex: &Handle, size: usize, total: usize, per_frame: usize) -> Duration {
    let (client, server) = tcp_pair().await;
    let mut writer = client.into_split().1;
    let server = server.into_std().unwrap();
    let receiver = cortex.spawn(async move {
        let mut reader = TcpStream::from_std(server).unwrap();
        let mut seen = 0;
        let mut buf = Vec::new();
        while seen < total {
            let len = reader.read_u32().await.unwrap() as usize;
            buf.resize(len, 0);
            reader.read_exact(&mut buf).await.unwrap();
            seen += count_events(&buf);
        }
    });
    let start = Instant::now();
    let payload = vec![0xa5u8; size];
    let mut encoder = EventsEncoder::new();
    let mut frame = Vec::new();
    let mut sent = 0;
    while sent < total {
        encoder.start(sent as u64 + 1);
        let n = per_frame.min(total - sent);
        for _ in 0..n {
            encoder.push(&payload);
        }
        let message = encoder.finish();
        frame.clear();
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(message);
        writer.write_all(&frame).await.unwrap();
        sent += n;
    }
    receiver.await.unwrap();
    start.elapsed()
}

/// Single-thread ChaCha20-Poly1305 sealing speed of the transport cipher, no I/O: the ceiling
/// for bulk throughput on this machine.
async fn aead_seal_mb_per_s(keys: &Keys) -> f64 {
    let (mut client, mut server) = tcp_pair().await;
    let cortex_key = keys.cortex.public();
    let (agent_side, _) = tokio::join!(
        handshake::initiate(
            &mut client,
            HandshakeMode::Classic,
            &keys.agent,
            &cortex_key,
            &[]
        ),
        handshake::respond(
            &mut server,
            &keys.cortex,
            false,
            |key| keys.allow.authorize(key).cloned(),
            |_| 0u64.to_be_bytes().to_vec(),
        )
    );
    let mut cipher = agent_side.unwrap().0.send;
    let chunk = 512 * 1024;
    let iterations = 200;
    let mut buf = Vec::with_capacity(chunk + 16);
    let start = Instant::now();
    for _ in 0..iterations {
        buf.clear();
        buf.resize(chunk, 0x5a);
        cipher.encrypt_with_ad(&[], &mut buf).unwrap();
    }
    mb_per_s(iterations, chunk, start.elapsed())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn mb_per_s(events: usize, size: usize, elapsed: Duration) -> f64 {
    (events * size) as f64 / 1e6 / elapsed.as_secs_f64()
}

#[derive(Default)]
struct Samples {
    hs_classic_ms: Vec<f64>,
    hs_hybrid_ms: Vec<f64>,
    small_secure_eps: Vec<f64>,
    small_plain_eps: Vec<f64>,
    bulk_secure_mbps: Vec<f64>,
    bulk_plain_mbps: Vec<f64>,
    aead_mbps: Vec<f64>,
}

async fn run(cortex: Handle) -> Samples {
    let keys = keys();
    let mut s = Samples::default();
    // Warm-up so the first round does not pay for page faults and lazy init.
    handshake_once(&keys, HandshakeMode::Hybrid).await;
    stream_secure(&keys, &cortex, SMALL_EVENT, 100_000, SMALL_PER_FRAME).await;
    for round in 1..=ROUNDS {
        for _ in 0..HANDSHAKES_PER_ROUND {
            s.hs_classic_ms.push(
                handshake_once(&keys, HandshakeMode::Classic)
                    .await
                    .as_secs_f64()
                    * 1e3,
            );
            s.hs_hybrid_ms.push(
                handshake_once(&keys, HandshakeMode::Hybrid)
                    .await
                    .as_secs_f64()
                    * 1e3,
            );
        }
        let plain = stream_plain(
            &cortex,
            SMALL_EVENT,
            SMALL_EVENTS_PER_ROUND,
            SMALL_PER_FRAME,
        )
        .await;
        let secure = stream_secure(
            &keys,
            &cortex,
            SMALL_EVENT,
            SMALL_EVENTS_PER_ROUND,
            SMALL_PER_FRAME,
        )
        .await;
        let (plain_eps, secure_eps) = (
            SMALL_EVENTS_PER_ROUND as f64 / plain.as_secs_f64(),
            SMALL_EVENTS_PER_ROUND as f64 / secure.as_secs_f64(),
        );
        let bulk_plain = stream_plain(
            &cortex,
            LARGE_EVENT,
            LARGE_EVENTS_PER_ROUND,
            LARGE_PER_FRAME,
        )
        .await;
        let bulk_secure = stream_secure(
            &keys,
            &cortex,
            LARGE_EVENT,
            LARGE_EVENTS_PER_ROUND,
            LARGE_PER_FRAME,
        )
        .await;
        let (plain_mbps, secure_mbps) = (
            mb_per_s(LARGE_EVENTS_PER_ROUND, LARGE_EVENT, bulk_plain),
            mb_per_s(LARGE_EVENTS_PER_ROUND, LARGE_EVENT, bulk_secure),
        );
        println!(
            "round {round}: small {secure_eps:>10.0} ev/s vs plain {plain_eps:>10.0} (ratio {:.2}) | \
             bulk {secure_mbps:>7.0} MB/s vs plain {plain_mbps:>7.0} (ratio {:.2})",
            secure_eps / plain_eps,
            secure_mbps / plain_mbps,
        );
        s.aead_mbps.push(aead_seal_mb_per_s(&keys).await);
        s.small_secure_eps.push(secure_eps);
        s.small_plain_eps.push(plain_eps);
        s.bulk_secure_mbps.push(secure_mbps);
        s.bulk_plain_mbps.push(plain_mbps);
    }
    s
}

fn main() {
    // Agent and cortex each get their own single-threaded runtime, as two processes would.
    let agent = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cortex = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut s = agent.block_on(run(cortex.handle().clone()));
    let small_ratio: Vec<f64> = s
        .small_secure_eps
        .iter()
        .zip(&s.small_plain_eps)
        .map(|(a, b)| a / b)
        .collect();
    let bulk_ratio: Vec<f64> = s
        .bulk_secure_mbps
        .iter()
        .zip(&s.bulk_plain_mbps)
        .map(|(a, b)| a / b)
        .collect();
    let report = serde_json::json!({
        "small_events_per_s": median(&mut s.small_secure_eps),
        "plain_tcp_small_events_per_s": median(&mut s.small_plain_eps),
        "bulk_mb_per_s": median(&mut s.bulk_secure_mbps),
        "plain_tcp_mb_per_s": median(&mut s.bulk_plain_mbps),
        "aead_seal_only_mb_per_s": median(&mut s.aead_mbps),
        "handshake_ms_hybrid": median(&mut s.hs_hybrid_ms),
        "handshake_ms_classic": median(&mut s.hs_classic_ms),
        "small_ratio_vs_plain_per_round": small_ratio,
        "bulk_ratio_vs_plain_per_round": bulk_ratio,
        "baseline": "plain TCP, same envelopes, u32 length prefix, no encryption",
        "rounds": ROUNDS,
        "small_event_bytes": SMALL_EVENT,
        "large_event_bytes": LARGE_EVENT,
        "threads": "agent runtime 1 thread, cortex runtime 1 thread",
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("channel.json"), report.to_string()).unwrap();
    println!("wrote {}", dir.join("channel.json").display());
}
