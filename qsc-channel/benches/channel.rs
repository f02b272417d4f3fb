//! Channel benchmark: handshake latency (classic vs ML-KEM hybrid) and streaming throughput of
//! the encrypted transport against a plain-TCP baseline carrying the same envelopes, over
//! loopback, in one run, modes interleaved over several rounds.
//!
//! Run with `cargo bench -p qsc-channel --bench channel`. Writes `target/bench/channel.json`.
//! Measures the transport and envelope layers (framing, ChaCha20-Poly1305, batching, decode);
//! the agent's disk outbox and the cortex's sink are outside the measured path.

use std::time::{Duration, Instant};

use qsc_channel::aead::ChaChaPoly;
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
    let mut sent = 0;
    while sent < total {
        let n = per_frame.min(total - sent);
        writer
            .send_with(|buf| push_events(buf, sent as u64 + 1, &payload, n))
            .await
            .unwrap();
        sent += n;
    }
    receiver.await.unwrap();
    start.elapsed()
}

/// Appends an Events message of `n` copies of `payload` to `buf`.
fn push_events(buf: &mut Vec<u8>, first_seq: u64, payload: &[u8], n: usize) {
    let mut encoder = EventsEncoder::start(buf, first_seq);
    for _ in 0..n {
        encoder.push(payload);
    }
    encoder.finish();
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
    let mut frame = Vec::new();
    let mut sent = 0;
    while sent < total {
        let n = per_frame.min(total - sent);
        frame.clear();
        frame.extend_from_slice(&[0; 4]);
        push_events(&mut frame, sent as u64 + 1, &payload, n);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        writer.write_all(&frame).await.unwrap();
        sent += n;
    }
    receiver.await.unwrap();
    start.elapsed()
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time of the whole process (agent and cortex runtimes together).
fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out-pointer.
    let status = unsafe { libc::clock_gettime(clock, &mut ts) };
    assert_eq!(status, 0, "clock_gettime failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

const AEAD_CHUNK: usize = 512 * 1024;
const AEAD_ITERATIONS: usize = 100;

/// CPU ms per MB to seal and then open `AEAD_CHUNK` bytes in place, single thread, no I/O:
/// the transport's ChaCha20-Poly1305 (OpenSSL) and, as the baseline it replaced, ring's.
fn aead_seal_open_cpu_ms_per_mb() -> (f64, f64) {
    let key = [0x42u8; 32];
    let ad = [7u8; 12];
    let mut buf = vec![0x5au8; AEAD_CHUNK + 16];
    let mut ours = ChaChaPoly::new(&key).unwrap();
    let ours_ms = cpu_ms_per_mb(|i| {
        let nonce = nonce(i);
        let tag = ours
            .seal_in_place(&nonce, &ad, &mut buf[..AEAD_CHUNK])
            .unwrap();
        buf[AEAD_CHUNK..].copy_from_slice(&tag);
        ours.open_in_place(&nonce, &ad, &mut buf).unwrap();
    });
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key).unwrap(),
    );
    let ring_ms = cpu_ms_per_mb(|i| {
        let seal_nonce = ring::aead::Nonce::assume_unique_for_key(nonce(i));
        let tag = ring_key
            .seal_in_place_separate_tag(
                seal_nonce,
                ring::aead::Aad::from(&ad),
                &mut buf[..AEAD_CHUNK],
            )
            .unwrap();
        buf[AEAD_CHUNK..].copy_from_slice(tag.as_ref());
        let open_nonce = ring::aead::Nonce::assume_unique_for_key(nonce(i));
        ring_key
            .open_in_place(open_nonce, ring::aead::Aad::from(&ad), &mut buf)
            .unwrap();
    });
    (ours_ms, ring_ms)
}

fn nonce(i: usize) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&(i as u64).to_le_bytes());
    nonce
}

/// Runs `round` AEAD_ITERATIONS times (after a few warm-up calls); CPU ms per MB of chunk.
fn cpu_ms_per_mb(mut round: impl FnMut(usize)) -> f64 {
    for i in 0..5 {
        round(i);
    }
    let start = thread_cpu();
    for i in 0..AEAD_ITERATIONS {
        round(i + 5);
    }
    let cpu = thread_cpu() - start;
    cpu.as_secs_f64() * 1e3 / ((AEAD_ITERATIONS * AEAD_CHUNK) as f64 / 1e6)
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
    bulk_secure_cpu_ms_per_mb: Vec<f64>,
    bulk_plain_cpu_ms_per_mb: Vec<f64>,
    aead_ms_per_mb: Vec<f64>,
    ring_aead_ms_per_mb: Vec<f64>,
}

/// Runs `stream` and returns its wall time and the process CPU ms per MB of events it moved.
async fn cpu_and_wall(
    stream: impl std::future::Future<Output = Duration>,
    bytes: usize,
) -> (Duration, f64) {
    let cpu = process_cpu();
    let wall = stream.await;
    let cpu = process_cpu() - cpu;
    (wall, cpu.as_secs_f64() * 1e3 / (bytes as f64 / 1e6))
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
        let bulk_bytes = LARGE_EVENTS_PER_ROUND * LARGE_EVENT;
        let (bulk_plain, plain_cpu) = cpu_and_wall(
            stream_plain(
                &cortex,
                LARGE_EVENT,
                LARGE_EVENTS_PER_ROUND,
                LARGE_PER_FRAME,
            ),
            bulk_bytes,
        )
        .await;
        let (bulk_secure, secure_cpu) = cpu_and_wall(
            stream_secure(
                &keys,
                &cortex,
                LARGE_EVENT,
                LARGE_EVENTS_PER_ROUND,
                LARGE_PER_FRAME,
            ),
            bulk_bytes,
        )
        .await;
        let (plain_mbps, secure_mbps) = (
            mb_per_s(LARGE_EVENTS_PER_ROUND, LARGE_EVENT, bulk_plain),
            mb_per_s(LARGE_EVENTS_PER_ROUND, LARGE_EVENT, bulk_secure),
        );
        println!(
            "round {round}: small {secure_eps:>10.0} ev/s vs plain {plain_eps:>10.0} (ratio {:.2}) | \
             bulk {secure_mbps:>7.0} MB/s vs plain {plain_mbps:>7.0} (ratio {:.2}), \
             CPU {secure_cpu:.3} vs {plain_cpu:.3} ms/MB",
            secure_eps / plain_eps,
            secure_mbps / plain_mbps,
        );
        let (aead_ms, ring_ms) = aead_seal_open_cpu_ms_per_mb();
        s.aead_ms_per_mb.push(aead_ms);
        s.ring_aead_ms_per_mb.push(ring_ms);
        s.bulk_secure_cpu_ms_per_mb.push(secure_cpu);
        s.bulk_plain_cpu_ms_per_mb.push(plain_cpu);
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
        "bulk_cpu_ms_per_mb": median(&mut s.bulk_secure_cpu_ms_per_mb),
        "plain_tcp_cpu_ms_per_mb": median(&mut s.bulk_plain_cpu_ms_per_mb),
        "bulk_cpu_means": "process CPU time (agent + cortex threads) per MB of events",
        "aead_seal_open_cpu_ms_per_mb": median(&mut s.aead_ms_per_mb),
        "ring_aead_seal_open_cpu_ms_per_mb": median(&mut s.ring_aead_ms_per_mb),
        "aead_means": "one thread seals then opens 512 KiB in place; OpenSSL (used) vs ring (baseline)",
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
