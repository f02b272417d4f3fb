//! The agent's event loop: drain the ring buffer, enrich, emit; on timers report losses,
//! sample host metrics, follow the auth log and scan memory maps.

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use qsc_event::{Event, EventKind, EventLoss, Heartbeat, MemoryRwx, RwxSource, Source};
use tokio::io::unix::AsyncFd;

use crate::{
    authlog::{self, AuthLog},
    config::{self, Config},
    enrich::Enricher,
    forensics::{self, RwxTracker},
    metrics::{Activity, Sampler},
    output::Output,
    proctable::ProcessTable,
    record,
    sensor::{self, Sensor, SensorOptions, SharedSensor},
    sockdiag,
    users::UserNames,
    volume::{Owner, OwnerMap, VolumeTracker},
};

const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

pub struct Agent {
    host_id: String,
    seq: u64,
    output: Output,
    enricher: Enricher,
    rwx: RwxTracker,
    proc_root: PathBuf,
    /// Losses already reported, indexed by record kind.
    lost_reported: [u64; guardian_alpha_common::LOST_SLOTS as usize],
    decode_errors: u64,
    ring_wakeups: u64,
    /// The `[sensor] wake_at_once` kinds (bit `1 << kind`).
    wake_mask: u32,
    started: Instant,
    active_hooks: Vec<String>,
    auth_failures: u64,
    last_activity: crate::enrich::ActivityCounters,
    /// Events emitted, by kind, for the shutdown summary.
    emitted: std::collections::BTreeMap<&'static str, u64>,
    /// Rollbacks the response executor ran by itself, to be sent as events.
    response_events: Option<tokio::sync::mpsc::Receiver<EventKind>>,
}

/// What the agent did, written at shutdown with `--stats-file` (benchmarks and operators).
#[derive(serde::Serialize)]
pub struct AgentStats<'a> {
    pub emitted: &'a std::collections::BTreeMap<&'static str, u64>,
    pub lost_by_record: std::collections::BTreeMap<&'static str, u64>,
    pub decode_errors: u64,
    /// Times the kernel woke the agent to read the ring buffer (timer drains not counted).
    pub ring_wakeups: u64,
    pub uptime_s: f64,
}

/// Loads and attaches the sensor as `config` says.
pub fn start_sensor(config: &Config) -> anyhow::Result<Sensor> {
    sensor::ensure_tracefs(&config.sensor.tracefs)?;
    let btf = match crate::btf::Btf::from_sys_fs() {
        Ok(btf) => Some(btf),
        Err(err) => {
            tracing::warn!(%err, "no kernel BTF: ppid, argv and exit codes will be reported as 0");
            None
        }
    };
    let formats = crate::layout::TracepointFormats::new(&config.sensor.tracefs);
    let (layout, exe_folder, warnings) = crate::layout::resolve(btf.as_ref(), &formats)?;
    for warning in warnings {
        tracing::warn!(%warning, "kernel layout");
    }
    let object = sensor::object_bytes(config.sensor.ebpf_object.as_deref())?;
    let enforce_cgroup = match (
        &config.enforce.cgroup,
        config.enforce.disable_address_blocking,
    ) {
        (_, true) => None,
        (Some(path), false) => Some(path.clone()),
        (None, false) => sensor::cgroup_v2_root(),
    };
    if enforce_cgroup.is_none() && !config.enforce.disable_address_blocking {
        tracing::warn!("no cgroup v2 hierarchy found: address blocking is off");
    }
    let mut sensor = Sensor::load(&SensorOptions {
        object: &object,
        ring_buffer_bytes: config.sensor.ring_buffer_bytes,
        layout,
        exe_folder,
        agent_tgid: std::process::id(),
        enforce_cgroup: enforce_cgroup.as_deref(),
        wakeup_bytes: config
            .sensor
            .wakeup_bytes
            .min(u64::from(config.sensor.ring_buffer_bytes) / 4),
        wake_at_once: sensor::WakeKind::mask(&config.sensor.wake_at_once),
        wake_spacing_ns: config.sensor.wake_spacing_us.saturating_mul(1000),
        disabled: &config.sensor.disabled_hooks,
        watched: &watched_prefixes(config),
    })?;
    for ip in &config.enforce.blocked_ips {
        sensor.block_ip(*ip)?;
    }
    for path in &config.enforce.blocked_exec {
        sensor.block_exec(path)?;
    }
    for (hook, reason) in &sensor.skipped_hooks {
        if reason == sensor::DISABLED_BY_CONFIG {
            tracing::info!(%hook, %reason, "hook not attached");
        } else {
            tracing::warn!(%hook, %reason, "optional hook not attached");
        }
    }
    tracing::info!(hooks = sensor.active_hooks.len(), active = ?sensor.active_hooks, "sensor attached");
    Ok(sensor)
}

fn watched_prefixes(config: &Config) -> Vec<(String, guardian_alpha_common::WatchFlags)> {
    use guardian_alpha_common::WatchFlags;
    config
        .watch
        .iter()
        .flat_map(|rule| {
            let bits = if rule.reads { WatchFlags::READS } else { 0 }
                | if rule.modifications {
                    WatchFlags::MODIFICATIONS
                } else {
                    0
                };
            config::expand_prefix(&rule.prefix)
                .into_iter()
                .map(move |prefix| (prefix, WatchFlags { bits }))
        })
        .collect()
}

impl Agent {
    /// `commands` executes what the cortex sends over the uplink (when it is on).
    pub fn new(
        config: &Config,
        active_hooks: Vec<String>,
        commands: impl qsc_channel::delivery::CommandHandler,
    ) -> anyhow::Result<Self> {
        let host_id = config.host_id();
        let proc_root = PathBuf::from("/proc");
        let mut table =
            ProcessTable::new(&proc_root, &host_id, UserNames::from_passwd("/etc/passwd"));
        let seeded = table.seed();
        tracing::info!(processes = seeded, "process table seeded from /proc");
        Ok(Agent {
            host_id,
            seq: 0,
            output: Output::open_with(config, commands)?,
            enricher: Enricher::new(table, VolumeTracker::new(config.network.volume_min_bytes)),
            rwx: RwxTracker::default(),
            proc_root,
            lost_reported: [0; guardian_alpha_common::LOST_SLOTS as usize],
            decode_errors: 0,
            ring_wakeups: 0,
            wake_mask: sensor::WakeKind::mask(&config.sensor.wake_at_once),
            started: Instant::now(),
            active_hooks,
            auth_failures: 0,
            last_activity: Default::default(),
            emitted: Default::default(),
            response_events: None,
        })
    }

    /// Emits each event the response executor reports by itself (`respond::events`).
    pub fn with_response_events(mut self, events: tokio::sync::mpsc::Receiver<EventKind>) -> Self {
        self.response_events = Some(events);
        self
    }

    fn emit(&mut self, kind: EventKind, mono_ns: Option<u64>) -> anyhow::Result<()> {
        self.seq += 1;
        *self.emitted.entry(kind.name()).or_default() += 1;
        let mut event = Event::new(&self.host_id, Source::Alpha, self.seq, kind);
        event.mono_ns = mono_ns;
        self.output.write(event)?;
        Ok(())
    }

    /// Decodes, enriches and emits one kernel record; returns whether it is of a
    /// `wake_at_once` kind.
    fn handle_record(&mut self, bytes: &[u8]) -> anyhow::Result<bool> {
        let record = match record::decode(bytes) {
            Ok(record) => record,
            Err(err) => {
                self.decode_errors += 1;
                tracing::warn!(%err, total = self.decode_errors, "undecodable kernel record");
                return Ok(false);
            }
        };
        let urgent = 1u32
            .checked_shl(u32::from(record.header().kind))
            .is_some_and(|bit| self.wake_mask & bit != 0);
        let mono_ns = Some(record.header().ktime_ns);
        let Some(kind) = self.enricher.enrich(record) else {
            return Ok(urgent);
        };
        let rwx_pid = match &kind {
            EventKind::MemoryRwx(m) => Some(m.process.pid),
            EventKind::ProcessExit(e) => {
                self.rwx.forget(e.process.pid);
                None
            }
            _ => None,
        };
        self.emit(kind, mono_ns)?;
        if let Some(pid) = rwx_pid {
            self.scan_process(pid)?;
        }
        Ok(urgent)
    }

    /// Reports W+X regions of `pid` not reported before.
    fn scan_process(&mut self, pid: u32) -> anyhow::Result<()> {
        let regions = self.rwx.new_regions(&self.proc_root, pid);
        self.report_rwx(pid, regions)
    }

    /// Reports those of `regions` (W+X regions of `pid`) not reported before.
    fn report_rwx(&mut self, pid: u32, regions: Vec<forensics::Region>) -> anyhow::Result<()> {
        if regions.is_empty() {
            return Ok(());
        }
        let Some(process) = process_of_pid(&mut self.enricher.table, &self.proc_root, pid) else {
            return Ok(());
        };
        for region in regions {
            self.emit(
                EventKind::MemoryRwx(MemoryRwx {
                    process: process.clone(),
                    origin: RwxSource::MapsScan,
                    addr: region.start,
                    len: region.end - region.start,
                    prot: 7,
                    region: Some(region.name),
                }),
                None,
            )?;
        }
        Ok(())
    }

    /// Accounts the counters of the open connections (drained `ring` first, so that every
    /// connection missing from the poll had its close accounted).
    fn poll_volume(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<()> {
        let sockets = match sockdiag::tcp_sockets() {
            Ok(sockets) => sockets,
            Err(err) => {
                tracing::warn!(%err, "cannot poll TCP connection counters: only closed connections are accounted this interval");
                Vec::new()
            }
        };
        self.drain(ring)?;
        let proc_root = self.proc_root.clone();
        let Enricher { table, volume, .. } = &mut self.enricher;
        volume.on_poll(&sockets, |inodes| socket_owners(table, &proc_root, inodes));
        Ok(())
    }

    /// Polls, then emits the `net_volume` events of the interval that began at `since` (and
    /// now begins again).
    fn report_volume(
        &mut self,
        ring: &mut RingBuf<MapData>,
        since: &mut Instant,
    ) -> anyhow::Result<()> {
        self.poll_volume(ring)?;
        let interval_ms = since.elapsed().as_millis() as u64;
        *since = Instant::now();
        for volume in self.enricher.volume.flush(interval_ms) {
            self.emit(EventKind::NetVolume(volume), None)?;
        }
        Ok(())
    }

    /// Reports the regions of a whole-host scan not reported before.
    fn report_scan(&mut self, scanned: Vec<(u32, Vec<forensics::Region>)>) -> anyhow::Result<()> {
        for (pid, regions) in scanned {
            let regions = self.rwx.unseen(pid, regions);
            self.report_rwx(pid, regions)?;
        }
        Ok(())
    }

    fn report_loss(&mut self, sensor: &SharedSensor) -> anyhow::Result<()> {
        let lost = lock(sensor)?.lost_records()?;
        for (kind, total) in lost {
            let reported = &mut self.lost_reported[kind as usize];
            if total <= *reported {
                continue;
            }
            let lost = total - *reported;
            *reported = total;
            tracing::warn!(
                record = kind.name(),
                lost,
                total,
                "kernel ring buffer was full: records lost"
            );
            self.emit(
                EventKind::EventLoss(EventLoss {
                    stage: "kernel_ringbuf".into(),
                    record: Some(kind.name().into()),
                    lost,
                    total,
                }),
                None,
            )?;
        }
        Ok(())
    }

    fn heartbeat(&mut self) -> anyhow::Result<()> {
        self.emit(
            EventKind::Heartbeat(Heartbeat {
                version: env!("CARGO_PKG_VERSION").into(),
                uptime_s: self.started.elapsed().as_secs(),
                active_hooks: self.active_hooks.clone(),
            }),
            None,
        )
    }

    fn follow_auth_log(&mut self, log: &mut AuthLog) -> anyhow::Result<()> {
        for line in log.new_lines() {
            if let Some(kind) = authlog::parse_line(&line) {
                if matches!(kind, EventKind::AuthFailure(_)) {
                    self.auth_failures += 1;
                }
                self.emit(kind, None)?;
            }
        }
        Ok(())
    }

    fn sample_metrics(&mut self, sampler: &mut Sampler, interval: Duration) -> anyhow::Result<()> {
        let now = self.enricher.counters;
        let activity = Activity {
            failed_logins: std::mem::take(&mut self.auth_failures),
            new_processes: now.execs - self.last_activity.execs,
            new_connections: now.connects - self.last_activity.connects,
        };
        self.last_activity = now;
        let metrics = sampler.sample(interval.as_millis() as u64, activity);
        self.emit(EventKind::HostMetrics(metrics), None)
    }

    /// Runs until `shutdown` completes; the sensor is detached when its last holder (this
    /// caller, or the response executor) drops it.
    pub async fn run(
        &mut self,
        config: &Config,
        sensor: SharedSensor,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let ring: RingBuf<MapData> = lock(&sensor)?.take_ring_buffer()?;
        // SAFETY: the RingBuf owns its map fd, which stays open and unchanged for as long as the
        // AsyncFd (which owns the RingBuf) lives.
        let mut ring =
            unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
                .map_err(|err| err.into_parts().1)?;
        let mut loss_tick = ticker(Duration::from_millis(config.sensor.loss_report_interval_ms));
        let mut heartbeat_tick = ticker(HEARTBEAT_INTERVAL);
        let metrics_interval = Duration::from_secs(config.metrics.interval_s.max(1));
        let mut metrics_tick = ticker(metrics_interval);
        let mut auth_log_tick = ticker(Duration::from_millis(
            config.metrics.auth_log_poll_ms.max(1),
        ));
        let scan_interval = Duration::from_secs(config.forensics.scan_interval_s.max(1));
        let mut scan_tick = ticker(scan_interval);
        // Records submitted without a wake-up are drained at least this often.
        let mut drain_tick = ticker(Duration::from_millis(config.sensor.max_delay_ms));
        let mut follow_up =
            FollowUpDrain::new(Duration::from_micros(config.sensor.wake_spacing_us));
        let volume_on = config.network.volume_interval_s > 0;
        let mut volume_tick = ticker(Duration::from_secs(config.network.volume_interval_s.max(1)));
        let mut volume_since = Instant::now();
        if volume_on {
            // The starting point of the connections already open.
            self.poll_volume(ring.get_mut())?;
        }
        let mut sampler = Sampler::new(&self.proc_root);
        let mut auth_log = AuthLog::open(&config.metrics.auth_logs);
        release_startup_memory();
        self.heartbeat()?;
        self.output.flush()?;
        let mut response_events = self.response_events.take();
        let mut maps_scans = MapsScans::new(&self.proc_root);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(event) = next_response_event(&mut response_events) => {
                    self.emit(event, None)?;
                }
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain(guard.get_inner_mut())?;
                    guard.clear_ready();
                    self.ring_wakeups += 1;
                    follow_up.arm();
                }
                () = follow_up.due() => {
                    if self.drain(ring.get_mut())? > 0 {
                        follow_up.arm();
                    }
                }
                _ = drain_tick.tick() => {
                    self.drain(ring.get_mut())?;
                }
                _ = loss_tick.tick() => self.report_loss(&sensor)?,
                _ = heartbeat_tick.tick() => self.heartbeat()?,
                _ = metrics_tick.tick(), if config.metrics.interval_s > 0 => {
                    self.sample_metrics(&mut sampler, metrics_interval)?;
                }
                _ = auth_log_tick.tick(), if config.metrics.auth_log_poll_ms > 0 => {
                    self.follow_auth_log(&mut auth_log)?;
                }
                _ = scan_tick.tick(), if config.forensics.scan_interval_s > 0 => maps_scans.start(),
                Some(scanned) = maps_scans.finished() => self.report_scan(scanned)?,
                _ = volume_tick.tick(), if volume_on => {
                    self.report_volume(ring.get_mut(), &mut volume_since)?;
                }
            }
            self.output.flush()?;
        }
        // Drain what is already in the ring buffer so nothing captured is dropped at exit.
        self.drain(ring.get_mut())?;
        if volume_on {
            self.report_volume(ring.get_mut(), &mut volume_since)?;
        }
        self.report_loss(&sensor)?;
        self.output.flush()?;
        Ok(())
    }

    /// Handles every record waiting in the ring buffer; returns how many were of a
    /// `wake_at_once` kind.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> anyhow::Result<usize> {
        let mut urgent = 0;
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            urgent += usize::from(self.handle_record(bytes)?);
        }
        Ok(urgent)
    }

    pub fn stats(&self) -> AgentStats<'_> {
        AgentStats {
            emitted: &self.emitted,
            lost_by_record: guardian_alpha_common::RecordKind::ALL
                .iter()
                .map(|&k| (k.name(), self.lost_reported[k as usize]))
                .filter(|&(_, n)| n > 0)
                .collect(),
            decode_errors: self.decode_errors,
            ring_wakeups: self.ring_wakeups,
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// Whole-host scans of `/proc/*/maps`, each on a blocking thread so the ring buffer keeps
/// being read (and response-relevant events keep flowing) while one runs; at most one at a time.
struct MapsScans {
    proc_root: PathBuf,
    running: bool,
    sender: tokio::sync::mpsc::Sender<Vec<(u32, Vec<forensics::Region>)>>,
    done: tokio::sync::mpsc::Receiver<Vec<(u32, Vec<forensics::Region>)>>,
}

impl MapsScans {
    fn new(proc_root: &std::path::Path) -> Self {
        let (sender, done) = tokio::sync::mpsc::channel(1);
        MapsScans {
            proc_root: proc_root.to_owned(),
            running: false,
            sender,
            done,
        }
    }

    /// The findings of the scan started last; pending while none runs.
    async fn finished(&mut self) -> Option<Vec<(u32, Vec<forensics::Region>)>> {
        let scanned = self.done.recv().await;
        self.running = false;
        scanned
    }

    /// Starts a scan unless one is still running (then this tick is skipped).
    fn start(&mut self) {
        if self.running {
            return;
        }
        self.running = true;
        let (proc_root, sender) = (self.proc_root.clone(), self.sender.clone());
        tokio::task::spawn_blocking(move || {
            let _ = sender.blocking_send(forensics::scan_rwx(&proc_root, std::process::id()));
        });
    }
}

/// The drain that follows each wake-up by `[sensor] wake_spacing_us`: the kernel does not wake
/// the agent for a `wake_at_once` record within that spacing of its CPU's previous wake-up, so
/// this drain is what picks such a record up. Re-armed while it finds such records (a burst);
/// batched kinds alone do not re-arm it.
struct FollowUpDrain {
    spacing: Duration,
    at: Option<tokio::time::Instant>,
}

impl FollowUpDrain {
    fn new(spacing: Duration) -> Self {
        FollowUpDrain { spacing, at: None }
    }

    fn arm(&mut self) {
        if !self.spacing.is_zero() {
            self.at = Some(tokio::time::Instant::now() + self.spacing);
        }
    }

    /// Resolves when the armed drain is due (never while unarmed), disarming it.
    async fn due(&mut self) {
        match self.at {
            Some(at) => {
                tokio::time::sleep_until(at).await;
                self.at = None;
            }
            None => std::future::pending().await,
        }
    }
}

/// Hands the heap that start-up used and freed (kernel BTF, the object, the /proc seed: over
/// 10 MB) back to the kernel: glibc keeps freed memory below live allocations mapped, and it
/// would count in the agent's resident size for as long as the agent runs.
fn release_startup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn lock(sensor: &SharedSensor) -> anyhow::Result<std::sync::MutexGuard<'_, Sensor>> {
    sensor
        .lock()
        .map_err(|_| anyhow::anyhow!("the sensor lock is poisoned"))
}

/// The next event of the response executor; pending forever without a receiver (or once it
/// is closed).
async fn next_response_event(
    events: &mut Option<tokio::sync::mpsc::Receiver<EventKind>>,
) -> Option<EventKind> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn ticker(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// The process info of `pid` from the process table (with ids from /proc), for events found
/// by scanning rather than by a hook.
fn process_of_pid(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    pid: u32,
) -> Option<qsc_event::ProcessInfo> {
    let entry = table.get(pid).cloned()?;
    let (uid, gid) = ids_from_proc(proc_root, pid);
    let caller = crate::proctable::Caller {
        pid,
        tid: pid,
        ppid: entry.ppid,
        uid,
        gid,
        cgroup_id: 0,
        comm: &entry.comm,
        ktime_ns: 0,
    };
    Some(table.process_info(&caller))
}

/// Who holds each socket inode: the agent, a process of the table, or nobody found.
fn socket_owners(
    table: &mut ProcessTable,
    proc_root: &std::path::Path,
    inodes: &[u64],
) -> OwnerMap {
    let wanted: std::collections::HashSet<u64> = inodes.iter().copied().collect();
    let pids = sockdiag::socket_owners(proc_root, &wanted);
    inodes
        .iter()
        .map(|&inode| {
            let owner = match pids.get(&inode) {
                Some(&pid) if pid == std::process::id() => Owner::Agent,
                Some(&pid) => process_of_pid(table, proc_root, pid)
                    .map_or(Owner::Unknown, |p| Owner::Process(Box::new(p))),
                None => Owner::Unknown,
            };
            (inode, owner)
        })
        .collect()
}

/// Real uid/gid from `/proc/PID/status` for events found by scanning rather than by a hook.
fn ids_from_proc(proc_root: &std::path::Path, pid: u32) -> (u32, u32) {
    let Ok(status) = std::fs::read_to_string(proc_root.join(pid.to_string()).join("status")) else {
        return (0, 0);
    };
    let first = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok())
    };
    (first("Uid:").unwrap_or(0), first("Gid:").unwrap_or(0))
}
