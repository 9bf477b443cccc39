//! `callhook demo`: the whole service on one machine, nothing to install.
//!
//! Starts, all on 127.0.0.1:
//! 1. a simulated Asterisk 20 ([`crate::ami::simulator`]) that plays eight
//!    bundled real captures back to back with their real timing
//!    (`--speed N` divides the gaps; pauses longer than 5 s are shortened);
//! 2. a built-in webhook sink that answers `200 OK` to everything;
//! 3. callhook itself ([`crate::app::run_until`]) with `rules/demo.yaml`
//!    (its `127.0.0.1:8080` is pointed at the sink), a throwaway state
//!    directory, and a timeline printer.
//!
//! It prints a readable timeline (leg transitions and each webhook with its
//! status and latency) and stops by itself once the calls are played and
//! every delivery is done, or on Ctrl-C.
//!
//! It also serves the live API and the agent console on 127.0.0.1 and
//! prints the console's URLs (agents 1001 and 1002, the supervisor board),
//! each with a ticket: the replay waits up to 10 s for a browser to connect
//! (so the first screen-pop is not missed), and when a console is open the
//! demo stays up after the calls until Ctrl-C (click-to-call works too: the
//! simulator answers `Originate` with the recorded outcomes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::ami::simulator::{AfterCapture, Simulator};
use crate::app::{self, AppError, RunOptions};
use crate::config::Config;
use crate::deliver::dispatcher::AttemptReport;
use crate::model::{ModelEvent, Role, State};

/// The captures the demo plays, in the order they were recorded.
const CAPTURES: &[(&str, &[u8])] = &[
    (
        "incoming call answered by 1001",
        include_bytes!("../tests/fixtures/ami/asterisk-20/incoming-answered.ami"),
    ),
    (
        "incoming call nobody answers",
        include_bytes!("../tests/fixtures/ami/asterisk-20/incoming-noanswer.ami"),
    ),
    (
        "incoming call, 1001 busy",
        include_bytes!("../tests/fixtures/ami/asterisk-20/incoming-busy.ami"),
    ),
    (
        "queue ventas: 1001 and 1002 ring, 1002 answers",
        include_bytes!("../tests/fixtures/ami/asterisk-20/queue-answered.ami"),
    ),
    (
        "outgoing call, busy",
        include_bytes!("../tests/fixtures/ami/asterisk-20/outgoing-busy.ami"),
    ),
    (
        "internal call 1001 → 1002",
        include_bytes!("../tests/fixtures/ami/asterisk-20/internal.ami"),
    ),
    (
        "CRM click-to-call from 1001",
        include_bytes!("../tests/fixtures/ami/asterisk-20/click-to-call.ami"),
    ),
    (
        "outgoing call answered",
        include_bytes!("../tests/fixtures/ami/asterisk-20/outgoing-answered.ami"),
    ),
];

/// Recorded click-to-call outcomes the simulator answers `Originate` with.
const ORIGINATES: &[&[u8]] = &[
    include_bytes!("../tests/fixtures/ami/originate/answered.ami"),
    include_bytes!("../tests/fixtures/ami/originate/agent-busy.ami"),
    include_bytes!("../tests/fixtures/ami/originate/agent-noanswer.ami"),
    include_bytes!("../tests/fixtures/ami/originate/outside-busy.ami"),
];

/// The demo tenant's key (a demo on 127.0.0.1 only; never a real key).
const LIVE_KEY: &str = "demo-live-key-not-secret";

/// The demo's rule set.
pub const DEMO_RULES: &str = include_str!("../rules/demo.yaml");

const USER: &str = "demo";
const SECRET: &str = "demo-secret";

fn clock() -> String {
    let now = crate::model::Timestamp(crate::source::now_epoch()).to_rfc3339();
    now.get(11..23).unwrap_or(&now).to_string()
}

/// One timeline line for a model event (None: not worth a line).
fn timeline(ev: &ModelEvent) -> Option<String> {
    match ev {
        ModelEvent::Leg(l) => {
            let who = match (&l.caller_number, &l.caller_name) {
                (Some(n), Some(name)) => format!("{n} \"{name}\""),
                (Some(n), None) => n.clone(),
                _ => "?".into(),
            };
            let what = match (l.state, l.role) {
                (State::Ringing, Role::Callee) => format!("ringing   ← {who}"),
                (State::Ringing, Role::Caller) => match &l.dialed_number {
                    Some(d) => format!("calling   → {d}"),
                    None => "ringing   (click-to-call: the phone rings first)".to_string(),
                },
                (State::Answered, _) => "answered".to_string(),
                (State::Hungup, _) => format!(
                    "hung up   {} after {:.1} s",
                    l.disposition.map_or("", |d| d.as_str()),
                    l.duration.unwrap_or(0.0)
                ),
            };
            let queue = l
                .queue
                .as_ref()
                .map(|q| format!(" via queue {q}"))
                .unwrap_or_default();
            Some(format!(
                "{}  {:<5} {what}{queue}  [{}]",
                clock(),
                l.extension,
                l.direction.as_str()
            ))
        }
        ModelEvent::Call(c) => Some(format!(
            "{}  call {} {} {} → {}: {}, {:.1} s, billsec {:.1} s",
            clock(),
            c.session_id,
            c.direction.as_str(),
            c.caller_number.as_deref().unwrap_or("?"),
            c.dialed_number.as_deref().unwrap_or("?"),
            c.disposition.as_str(),
            c.duration,
            c.billsec
        )),
        ModelEvent::CallState(_) => None,
    }
}

fn short_url(url: &str) -> &str {
    // Scheme and host are the sink's; the path and query are what matters.
    url.find("://")
        .and_then(|i| url[i + 3..].find('/').map(|j| &url[i + 3 + j..]))
        .unwrap_or(url)
}

/// Runs the demo at `speed` until it is done or Ctrl-C.
pub async fn run(speed: f64) -> Result<(), AppError> {
    // The sink.
    let received = Arc::new(AtomicUsize::new(0));
    let count = received.clone();
    let sink = Router::new().fallback(move |_req: Request| {
        let count = count.clone();
        async move {
            count.fetch_add(1, Ordering::Relaxed);
            "ok\n"
        }
    });
    let sink_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| AppError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let sink_addr = sink_listener
        .local_addr()
        .map_err(|source| AppError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let token = CancellationToken::new();
    let sink_token = token.clone();
    tokio::spawn(async move {
        let _ = axum::serve(sink_listener, sink)
            .with_graceful_shutdown(async move { sink_token.cancelled().await })
            .await;
    });

    // The simulated PBX: the captures back to back on one connection.
    let mut capture = Vec::new();
    for (_, bytes) in CAPTURES {
        capture.extend_from_slice(bytes);
        if !capture.ends_with(b"\r\n\r\n") {
            capture.extend_from_slice(b"\r\n");
        }
    }
    let mut sim = Simulator::new(USER, SECRET)
        .session(capture, AfterCapture::StayOpen)
        .speed(Some(speed))
        .gated();
    for rec in ORIGINATES {
        if let Some(r) = crate::ami::sim_originate::OriginateRecording::from_capture(rec) {
            sim = sim.originate(r);
        }
    }
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| AppError::Listen {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            source,
        })?;
    let http_addr = http.local_addr().map_err(|source| AppError::Listen {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })?;
    let sim = sim.start().await.map_err(|source| AppError::Listen {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        source,
    })?;

    // callhook, configured by rules/demo.yaml.
    let state = std::env::temp_dir().join(format!("callhook-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let text = format!(
        "state_dir: {}\nlisten: {http_addr}\npbx:\n  - id: demo\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: {SECRET}, auth: md5 }}\nlive:\n  tenants:\n    demo: {{ key: {LIVE_KEY}, code: 100 }}\n  crm_url: \"https://crm.example/DbFind.aspx?pi={{caller_number}}\"\n{}",
        state.display(),
        sim.local_addr().port(),
        DEMO_RULES.replace("127.0.0.1:8080", &sink_addr.to_string())
    );
    let cfg = match Config::from_text(&text, std::path::Path::new(".")) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("rules/demo.yaml: {e}");
            }
            return Ok(());
        }
    };
    println!("callhook demo: a simulated Asterisk 20 on {} plays {} real calls at speed {speed}; webhooks go to a sink on {sink_addr}", sim.local_addr(), CAPTURES.len());
    for (what, _) in CAPTURES {
        println!("  - {what}");
    }
    if let Some(t) = cfg.live.as_ref().and_then(|l| l.tenants.get("demo")) {
        let exp = crate::source::now_epoch() as u64 + 3000;
        let url = |ext: &str, scope| {
            let ticket = crate::live::auth::mint(t, ext, scope, exp);
            format!("http://{http_addr}/console?ticket={ticket}")
        };
        println!("\nThe agent console (open in a browser; the first call waits for one, 10 s at speed 1):");
        println!(
            "  agent 1001:  {}",
            url("1001", crate::live::auth::Scope::Agent)
        );
        println!(
            "  agent 1002:  {}",
            url("1002", crate::live::auth::Scope::Agent)
        );
        println!(
            "  supervisor:  {}",
            url("999", crate::live::auth::Scope::Monitor)
        );
        println!("  (or {http_addr}/console with tenant demo, key {LIVE_KEY})");
    }
    println!("Ctrl-C stops.\n");

    let observer = Box::new(|evs: &[ModelEvent]| {
        for e in evs {
            if let Some(line) = timeline(e) {
                println!("{line}");
            }
        }
    });
    let (attempts_tx, mut attempts_rx) = mpsc::unbounded_channel::<AttemptReport>();
    crate::deliver::dispatcher::set_observer(Some(attempts_tx));
    tokio::spawn(async move {
        while let Some(a) = attempts_rx.recv().await {
            println!(
                "{}        → {} {} → {} in {} ms  ({})",
                clock(),
                a.method,
                short_url(&a.url),
                a.status,
                a.latency.as_millis(),
                a.rule
            );
        }
    });

    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (handles_tx, mut handles_rx) = mpsc::unbounded_channel();
    let app_token = token.clone();
    let app = tokio::spawn(app::run_until(
        cfg,
        RunOptions {
            config_path: None,
            observer: Some(observer),
            listener: Some(http),
            ..RunOptions::default()
        },
        app_token,
        reload_tx,
        reload_rx,
        move |running| {
            let _ = handles_tx.send(running);
        },
    ));
    let running = handles_rx.recv().await;
    // Give a browser the chance to open the console before the first call.
    let wait_browser = async {
        while crate::metrics::metrics().live_clients.get() == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let patience = Duration::from_secs_f64((10.0 / speed.max(1.0)).max(0.2));
    let _ = tokio::time::timeout(patience, wait_browser).await;
    sim.release();

    // Stop when everything is played and delivered, or on Ctrl-C.
    let done = async {
        sim.wait_for(|s| s.replays_completed >= 1).await;
        if let Some(r) = &running {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                match r.store.stats().await {
                    Ok(s) if s.pending + s.inflight == 0 => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    };
    let interrupted = tokio::select! {
        _ = done => { println!("\nall calls played and every webhook delivered"); false }
        _ = tokio::signal::ctrl_c() => { println!("\ninterrupted"); true }
    };
    if !interrupted && crate::metrics::metrics().live_clients.get() > 0 {
        println!("a console is open: the demo stays up (click-to-call works); Ctrl-C stops");
        let _ = tokio::signal::ctrl_c().await;
    }
    token.cancel();
    let result = match app.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    };
    crate::deliver::dispatcher::set_observer(None);
    println!(
        "the sink received {} requests",
        received.load(Ordering::Relaxed)
    );
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
    result
}
