//! Ingest benchmark: AMI events per second through callhook's whole ingest
//! path, each beside the limit measured in the same run over the same
//! bytes: a reader that only frames packets and splits every header into
//! borrowed slices with `memchr` (no message, no routing, no call model).
//!
//! Input: the 150-call real load `load-dev.ami` renumbered ×20 (3,000
//! distinct calls, about 246,000 events, 115 MB), generated here at start
//! (`ami::synthetic::renumbered`), never committed. Rows:
//!
//! * **memory**: `replay::replay` (codec → route → normalize, the code of
//!   `callhook replay`) against the memchr splitter over the same bytes.
//! * **socket**: the real daemon (`app::run_until`: AMI client → queue →
//!   normalizer task, no rules) logged in over loopback to a fake AMI that
//!   streams the same bytes as fast as the socket takes them, against the
//!   memchr splitter reading the same stream from the same fake AMI. Both
//!   sides under test run on one single-threaded runtime (one core); the
//!   fake AMI runs on its own threads.
//! * **burst**: 30,000 calls starting at once (`ami::synthetic::burst`,
//!   150,000 events) through the daemon with the default settings, same
//!   baseline: every call must arrive, none may be dropped.
//!
//! Every callhook row counts the call records it got and the events the
//! client dropped; the run fails if one is missing.
//!
//! Time is the **CPU time of the thread doing the work** (user + system,
//! `CLOCK_THREAD_CPUTIME_ID`; for the socket rows, the runtime thread that
//! reads the socket and runs the normalizer, read from the moment the fake
//! AMI starts streaming), so other processes on a shared machine change
//! the figures much less than they change wall time. The daemon's other
//! threads (the outbox writer storing live-call snapshots, the presence
//! tracker following the model) are not in it; wall-clock rates are
//! printed beside, and the presence thread's CPU below the table.
//!
//! `cargo bench --bench ingest` (5 interleaved rounds: each row's best,
//! and the median and range of the per-round ratios); `-- --quick` uses ×5
//! copies, a 6,000-call burst and 3 rounds; `-- --check` fails when a ratio
//! falls below a loose floor (CI runs `--quick --check`).

#[path = "../tests/support_app/mod.rs"]
mod support_app;
#[path = "../tests/support_fast_ami/mod.rs"]
mod support_fast_ami;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use callhook::ami::synthetic::{burst, renumbered, BANNER};
use callhook::ami::{AmiCodec, AmiFrame};
use callhook::app::{self, RunOptions};
use callhook::metrics::metrics;
use callhook::model::ModelEvent;
use callhook::normalize::{Normalizer, NormalizerConfig};
use callhook::replay::replay_from;
use support_fast_ami::FastAmi;
use tokio::io::AsyncReadExt;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

/// Loose floors for `--check` (the goal is 0.3; a shared 2-core machine
/// varies by a factor of three between runs of the same code).
const FLOOR_MEMORY: f64 = 0.05;
const FLOOR_SOCKET: f64 = 0.05;
/// The burst holds 30,000 calls at once (a call table far larger than the
/// caches): its floor is lower.
const FLOOR_BURST: f64 = 0.01;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let check = args.iter().any(|a| a == "--check");
    let (copies, burst_calls, rounds) = if quick {
        (5, 6_000, 3)
    } else {
        (20, 30_000, 5)
    };

    let load = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ami/asterisk-20/load-dev.ami"
    ))
    .expect("load-dev.ami");
    let t = Instant::now();
    let events = renumbered(&load, copies);
    let mut capture = BANNER.to_vec();
    capture.extend_from_slice(&events);
    let calls = 150 * copies;
    let n_events = split_memory(&capture);
    let burst_events = burst(burst_calls);
    let n_burst = split_memory(&burst_events);
    println!(
        "input: load-dev ×{copies}: {n_events} events, {:.1} MB, {calls} calls; burst: {burst_calls} calls, {n_burst} events ({:.1} s to generate)",
        capture.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    if let Some(what) = args.iter().find_map(|a| a.strip_prefix("--profile=")) {
        // One path in a loop, for `perf record`.
        for i in 0..10 {
            match what {
                "replay" => {
                    replay_records(&capture);
                }
                "burst" => {
                    let mut b = BANNER.to_vec();
                    b.extend_from_slice(&burst_events);
                    let t = Instant::now();
                    let records = replay_records(&b);
                    println!("burst replay: {records} records in {:?}", t.elapsed());
                }
                "run" => {
                    let fake = FakeAmi::start(Arc::new(events.clone()));
                    let got = daemon(fake.addr, &format!("profile-{i}"), calls);
                    let spent = got.done.since(fake.streaming());
                    println!(
                        "run: {} records, {} dropped, {:.0} events/s CPU, {:.0} wall",
                        got.records,
                        got.dropped,
                        n_events as f64 / spent.cpu.as_secs_f64(),
                        n_events as f64 / spent.wall.as_secs_f64()
                    );
                    fake.stop();
                }
                "burst-run" => {
                    let fake = FakeAmi::start(Arc::new(burst_events.clone()));
                    let got = daemon(fake.addr, &format!("profile-burst-{i}"), burst_calls);
                    let spent = got.done.since(fake.streaming());
                    println!(
                        "burst run: {} records, {} dropped, {:.0} events/s CPU",
                        got.records,
                        got.dropped,
                        n_burst as f64 / spent.cpu.as_secs_f64()
                    );
                    fake.stop();
                }
                "codec" => {
                    let t = Instant::now();
                    let mut codec = callhook::ami::route::codec(AmiCodec::DEFAULT_MAX_PACKET);
                    let mut buf = BytesMut::from(&capture[..]);
                    let (mut msgs, mut ignored) = (0, 0);
                    while let Ok(Some(f)) = codec.decode_eof(&mut buf) {
                        match f {
                            AmiFrame::Message(m) => {
                                msgs += 1;
                                std::hint::black_box(m);
                            }
                            AmiFrame::Ignored { .. } => ignored += 1,
                            _ => {}
                        }
                    }
                    let d = t.elapsed();
                    let t = Instant::now();
                    split_memory(&capture);
                    println!(
                        "codec: {msgs} built, {ignored} ignored in {d:?} ({:.0}/s); memchr {:?}",
                        n_events as f64 / d.as_secs_f64(),
                        t.elapsed()
                    );
                }
                _ => panic!("--profile=replay|run|codec|burst|burst-run"),
            }
        }
        return;
    }
    let mut best = Best::default();
    let mut losses = Losses::default();
    // The presence thread's CPU per daemon row: (row, events, least).
    let mut presence: Vec<(&str, usize, Duration)> = Vec::new();
    let mut note_presence = |row: &'static str, events: usize, got: &Got| {
        let Some(cpu) = got.presence else {
            return;
        };
        match presence.iter_mut().find(|(r, ..)| *r == row) {
            Some(e) => e.2 = e.2.min(cpu),
            None => presence.push((row, events, cpu)),
        }
    };
    for round in 0..rounds {
        // Memory.
        let t = Stamp::now();
        let n = split_memory(&capture);
        best.put("memory base", n_events, round, t.elapsed());
        assert_eq!(n, n_events);

        let t = Stamp::now();
        let records = replay_records(&capture);
        best.put("memory callhook", n_events, round, t.elapsed());
        assert_eq!(records, calls, "replay: call records");

        // Socket.
        let events = Arc::new(events.clone());
        let fake = FakeAmi::start(events.clone());
        let d = split_socket(fake.addr, n_events);
        best.put("socket base", n_events, round, d.since(fake.streaming()));
        fake.stop();

        let fake = FakeAmi::start(events);
        let got = daemon(fake.addr, &format!("ingest-{round}"), calls);
        best.put(
            "socket callhook",
            n_events,
            round,
            got.done.since(fake.streaming()),
        );
        losses.note("socket callhook", calls, &got);
        note_presence("run (loopback socket)", n_events, &got);
        fake.stop();

        // Burst.
        let bytes = Arc::new(burst_events.clone());
        let fake = FakeAmi::start(bytes.clone());
        let d = split_socket(fake.addr, n_burst);
        best.put("burst base", n_burst, round, d.since(fake.streaming()));
        fake.stop();

        let fake = FakeAmi::start(bytes);
        let got = daemon(fake.addr, &format!("burst-{round}"), burst_calls);
        best.put(
            "burst callhook",
            n_burst,
            round,
            got.done.since(fake.streaming()),
        );
        losses.note("burst callhook", burst_calls, &got);
        note_presence("run, burst", n_burst, &got);
        fake.stop();
        println!("round {} done", round + 1);
    }

    println!();
    println!(
        "events/s per CPU second of the working thread (best of {rounds}); relative = ratio of the bests, then median [min–max] of the {rounds} per-round ratios; wall = events/s by wall clock (best)"
    );
    println!("| path | events/s (CPU) | relative | per-round ratios | wall events/s | wall relative | records | dropped |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut failed = Vec::new();
    for (base, ours, what, records, floor) in [
        (
            "memory base",
            "memory callhook",
            "replay (memory)",
            calls,
            FLOOR_MEMORY,
        ),
        (
            "socket base",
            "socket callhook",
            "run (loopback socket)",
            calls,
            FLOOR_SOCKET,
        ),
        (
            "burst base",
            "burst callhook",
            "run, burst",
            burst_calls,
            FLOOR_BURST,
        ),
    ] {
        let (b, o) = (best.cpu_rate(base), best.cpu_rate(ours));
        let ratio = o / b;
        let (bw, ow) = (best.wall_rate(base), best.wall_rate(ours));
        let (med, lo, hi) = best.round_ratios(base, ours);
        println!(
            "| {what}: memchr framing + split (limit) | {b:.0} | 1.00 | | {bw:.0} | 1.00 | | |"
        );
        println!(
            "| {what}: callhook | {o:.0} | {ratio:.2} | {med:.2} [{lo:.2}–{hi:.2}] | {ow:.0} | {:.2} | {} / {records} | {} |",
            ow / bw,
            losses.records(ours).unwrap_or(records),
            losses.dropped(ours),
        );
        if ratio < floor {
            failed.push(format!("{what}: {ratio:.2} < {floor}"));
        }
    }
    for (row, events, cpu) in &presence {
        println!(
            "{row}: the presence thread (not in the figures above) used {:.0} ms of CPU ({:.0} events/s of its CPU; least of the complete rounds)",
            cpu.as_secs_f64() * 1e3,
            *events as f64 / cpu.as_secs_f64().max(1e-9),
        );
    }
    for (row, records, calls, dropped) in &losses.0 {
        failed.push(format!(
            "{row}: {records} of {calls} call records, {dropped} events dropped (worst round)"
        ));
    }
    if !failed.is_empty() {
        eprintln!("FAILED: {}", failed.join("; "));
        if check {
            std::process::exit(1);
        }
    }
}

/// Rounds of the daemon that lost call records or dropped events: (row,
/// fewest records, calls, most events dropped).
#[derive(Default)]
struct Losses(Vec<(&'static str, usize, usize, u64)>);

impl Losses {
    fn note(&mut self, row: &'static str, calls: usize, got: &Got) {
        if got.records >= calls && got.dropped == 0 {
            return;
        }
        match self.0.iter_mut().find(|(r, ..)| *r == row) {
            Some(e) => {
                e.1 = e.1.min(got.records);
                e.3 = e.3.max(got.dropped);
            }
            None => self.0.push((row, got.records, calls, got.dropped)),
        }
    }

    fn records(&self, row: &str) -> Option<usize> {
        self.0.iter().find(|(r, ..)| *r == row).map(|e| e.1)
    }

    fn dropped(&self, row: &str) -> u64 {
        self.0.iter().find(|(r, ..)| *r == row).map_or(0, |e| e.3)
    }
}

/// CPU time of the calling thread (user + system).
fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The CPU clock of the calling thread, readable from other threads.
fn thread_clock() -> libc::clockid_t {
    let mut id: libc::clockid_t = 0;
    // SAFETY: pthread_self() is the calling thread, alive for the call; `id`
    // is a valid out-pointer.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) };
    assert_eq!(rc, 0, "pthread_getcpuclockid");
    id
}

fn clock(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; `id` is a CPU clock of this
    // process (its thread is alive while the bench reads it).
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A moment: wall clock and the working thread's CPU time.
#[derive(Clone, Copy)]
struct Stamp {
    wall: Instant,
    cpu: Duration,
}

impl Stamp {
    /// Now, on the calling thread's CPU clock.
    fn now() -> Self {
        Self {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    /// Now, on the CPU clock `id` (another thread's).
    fn of(id: libc::clockid_t) -> Self {
        Self {
            wall: Instant::now(),
            cpu: clock(id),
        }
    }

    /// Wall and CPU time since `self`, on the calling thread.
    fn elapsed(&self) -> Spent {
        Stamp::now().since(*self)
    }

    fn since(&self, start: Stamp) -> Spent {
        Spent {
            wall: self.wall.saturating_duration_since(start.wall),
            cpu: self.cpu.saturating_sub(start.cpu),
        }
    }
}

/// Wall and CPU time a row took.
#[derive(Clone, Copy)]
struct Spent {
    wall: Duration,
    cpu: Duration,
}

/// One row's times: (round, time) for each round.
type Rounds = Vec<(usize, Spent)>;

/// Every round's times per row: (row, events, rounds).
#[derive(Default)]
struct Best(Vec<(&'static str, usize, Rounds)>);

impl Best {
    fn put(&mut self, name: &'static str, events: usize, round: usize, d: Spent) {
        match self.0.iter_mut().find(|(n, _, _)| *n == name) {
            Some(e) => e.2.push((round, d)),
            None => self.0.push((name, events, vec![(round, d)])),
        }
    }

    fn row(&self, name: &str) -> (usize, &[(usize, Spent)]) {
        self.0
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or((0, &[][..]), |(_, e, v)| (*e, v.as_slice()))
    }

    fn best(&self, name: &str, f: fn(&Spent) -> Duration) -> f64 {
        let (events, v) = self.row(name);
        v.iter()
            .map(|(_, s)| f(s))
            .min()
            .map_or(f64::NAN, |d| events as f64 / d.as_secs_f64())
    }

    fn cpu_rate(&self, name: &str) -> f64 {
        self.best(name, |s| s.cpu)
    }

    fn wall_rate(&self, name: &str) -> f64 {
        self.best(name, |s| s.wall)
    }

    /// Median, lowest and highest of the rounds' CPU-time ratios `ours`
    /// against `base` (the two measured one after the other).
    fn round_ratios(&self, base: &str, ours: &str) -> (f64, f64, f64) {
        let (_, b) = self.row(base);
        let (_, o) = self.row(ours);
        let mut r: Vec<f64> = b
            .iter()
            .filter_map(|(round, sb)| {
                let so = o.iter().find(|(r, _)| r == round)?.1;
                Some(sb.cpu.as_secs_f64() / so.cpu.as_secs_f64())
            })
            .collect();
        r.sort_by(f64::total_cmp);
        match r.len() {
            0 => (f64::NAN, f64::NAN, f64::NAN),
            n => (r[n / 2], r[0], r[n - 1]),
        }
    }
}

/// The limit: frames packets and splits each header line into borrowed key
/// and value slices with memchr. Returns the packets seen.
#[derive(Default)]
struct Splitter {
    packets: usize,
    fields: usize,
    in_packet: bool,
}

impl Splitter {
    /// Consumes the complete lines of `buf`; returns the bytes consumed.
    fn feed(&mut self, buf: &[u8]) -> usize {
        let mut pos = 0;
        let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(32);
        while let Some(i) = memchr::memchr(b'\n', &buf[pos..]) {
            let line = &buf[pos..pos + i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            pos += i + 1;
            if line.is_empty() {
                if self.in_packet {
                    self.packets += 1;
                    self.fields += std::hint::black_box(&fields).len();
                    fields.clear();
                    self.in_packet = false;
                }
            } else {
                self.in_packet = true;
                match memchr::memchr(b':', line) {
                    Some(c) => {
                        let v = &line[c + 1..];
                        fields.push((&line[..c], v.strip_prefix(b" ").unwrap_or(v)));
                    }
                    None => fields.push((b"", line)),
                }
            }
        }
        self.fields += std::hint::black_box(&fields).len();
        pos
    }
}

fn split_memory(bytes: &[u8]) -> usize {
    let mut s = Splitter::default();
    s.feed(bytes);
    s.packets
}

fn replay_records(capture: &[u8]) -> usize {
    let mut n = Normalizer::new(NormalizerConfig::default());
    let pbx: Arc<str> = "bench".into();
    let mut records = 0;
    replay_from([capture], &pbx, &mut n, |ev| {
        if let ModelEvent::Call(_) = ev {
            records += 1;
        }
    })
    .expect("reading memory");
    records
}

/// Logs in to the fake AMI and splits what it streams until `events`
/// packets (the list answer and the login response included) have come.
fn split_socket(addr: SocketAddr, events: usize) -> Stamp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(
            &mut s,
            b"Action: Login\r\nActionID: b-1\r\nUsername: bench\r\nSecret: bench\r\n\r\nAction: CoreShowChannels\r\nActionID: b-2\r\n\r\n",
        )
        .await
        .expect("login");
        let mut split = Splitter::default();
        let mut buf = vec![0u8; 256 * 1024];
        let mut filled = 0;
        // Login response + list start + list end come before the stream.
        let want = events + 3;
        loop {
            let n = s.read(&mut buf[filled..]).await.expect("read");
            assert!(n > 0, "stream ended after {} packets", split.packets);
            filled += n;
            let used = split.feed(&buf[..filled]);
            buf.copy_within(used..filled, 0);
            filled -= used;
            if split.packets >= want {
                return Stamp::now();
            }
        }
    })
}

/// What the daemon got.
struct Got {
    done: Stamp,
    records: usize,
    dropped: u64,
    /// CPU time of the presence thread when the last record came (`None`:
    /// it never came).
    presence: Option<Duration>,
}

/// CPU time (user + system) of the live threads named `name` (their
/// `comm`, at most 15 bytes, found in `/proc/self/task`); zero when
/// nothing matches.
fn threads_cpu(name: &str) -> Duration {
    let comm = &name.as_bytes()[..name.len().min(15)];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    let mut total = Duration::ZERO;
    for t in tasks.flatten() {
        let named = std::fs::read(t.path().join("comm"))
            .is_ok_and(|c| c.strip_suffix(b"\n").unwrap_or(&c) == comm);
        let tid = t
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::clockid_t>().ok());
        if let (true, Some(tid)) = (named, tid) {
            // Linux's CPU clock of a thread by id (what glibc's
            // pthread_getcpuclockid makes: CPUCLOCK_PERTHREAD | SCHED).
            total += clock_or_zero((!tid << 3) | 6);
        }
    }
    total
}

/// [`clock`], or zero when the clock cannot be read (the thread ended).
fn clock_or_zero(id: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock id is an error
    // return, not undefined behaviour.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the daemon against the fake AMI on a single-threaded runtime until
/// `calls` call records have come out of the normalizer.
fn daemon(addr: SocketAddr, pbx: &str, calls: usize) -> Got {
    let dir = std::env::temp_dir().join(format!(
        "callhook-bench-ingest-{}-{pbx}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "state_dir: {}\npbx:\n  - id: {pbx}\n    ami: {{ host: 127.0.0.1, port: {}, username: bench, secret: bench }}\n",
        dir.display(),
        addr.port()
    );
    let cfg = support_app::config(&text, Path::new("."));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = tokio::sync::watch::channel((0usize, None::<Stamp>));
    let bench_thread = thread::current().id();
    let mut records = 0;
    let (ptx, prx) = mpsc::channel();
    let observer = Box::new(move |evs: &[ModelEvent]| {
        for e in evs {
            if let ModelEvent::Call(_) = e {
                records += 1;
            }
        }
        // The normalizer runs on the runtime's one thread: its CPU clock.
        assert_eq!(thread::current().id(), bench_thread);
        let done = (records >= calls).then(Stamp::now);
        if done.is_some() {
            let _ = ptx.send(threads_cpu(callhook::presence::task::THREAD_NAME));
        }
        tx.send_if_modified(|v| {
            let changed = v.0 != records;
            *v = (records, v.1.or(done));
            changed
        });
    });
    let got = rt.block_on(async move {
        let token = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
        let task = tokio::spawn(app::run_until(
            cfg,
            RunOptions {
                config_path: None,
                observer: Some(observer),
                listener: None,
                ..RunOptions::default()
            },
            token.clone(),
            reload_tx,
            reload_rx,
            |_| {},
        ));
        // Until every record came; or, once the client dropped events (their
        // calls may never end), until none came for 5 s.
        let mut rx = rx;
        let dropped = metrics().ami_queue_dropped.with_label_values(&[pbx]);
        let started = Instant::now();
        loop {
            let quiet = Duration::from_secs(if dropped.get() > 0 { 5 } else { 120 });
            match tokio::time::timeout(quiet, rx.changed()).await {
                Ok(Ok(())) if rx.borrow().1.is_none() => {}
                _ => break,
            }
            if started.elapsed() > Duration::from_secs(1200) {
                break;
            }
        }
        let (records, done) = *rx.borrow();
        if records < calls {
            eprintln!(
                "{pbx}: only {records} of {calls} call records ({} events dropped)",
                dropped.get()
            );
        }
        token.cancel();
        let _ = task.await;
        (records, done.unwrap_or_else(Stamp::now))
    });
    let _ = std::fs::remove_dir_all(&dir);
    Got {
        done: got.1,
        records: got.0,
        dropped: metrics().ami_queue_dropped.with_label_values(&[pbx]).get(),
        presence: prx.try_recv().ok(),
    }
}

/// The fast fake AMI, with the moment its stream started on the CPU clock
/// of the thread that will read it (the calling thread).
struct FakeAmi {
    addr: SocketAddr,
    started: mpsc::Receiver<Stamp>,
    ami: FastAmi,
}

impl FakeAmi {
    fn start(stream: Arc<Vec<u8>>) -> Self {
        let reader_clock = thread_clock();
        let (tx, started) = mpsc::channel();
        let ami = FastAmi::start(stream, move || {
            let _ = tx.send(Stamp::of(reader_clock));
        });
        Self {
            addr: ami.addr,
            started,
            ami,
        }
    }

    /// When the stream started (blocks until it has).
    fn streaming(&self) -> Stamp {
        self.started
            .recv_timeout(Duration::from_secs(60))
            .expect("the stream never started")
    }

    fn stop(self) {
        self.ami.stop();
    }
}
