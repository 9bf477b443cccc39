//! The one wiring function: sources → normalizer → output, and shutdown.
//!
//! ```text
//! AMI client (one task per PBX) ──try_send──▶ bounded queue ──▶ normalizer task ──▶ output
//! ```
//!
//! Shutdown order (SIGINT or SIGTERM): the clients log off and stop reading,
//! the normalizer drains what they already queued, the output is flushed.

use std::io::Write;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::ami::client::{self, AuthMode, ClientConfig};
use crate::config::Config;
use crate::metrics::metrics;
use crate::model::ModelEvent;
use crate::normalize::Normalizer;
use crate::replay::{write_event, Format};
use crate::source::{now_epoch, SourceEvent};

/// The daemon could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Installing the signal handler failed.
    #[error("cannot install the signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// How often time-driven decisions run (maximum call age, undecided ≤ 11 channels).
const TICK: Duration = Duration::from_millis(250);

/// Builds one client config per configured PBX.
pub fn client_configs(cfg: &Config) -> Vec<ClientConfig> {
    cfg.pbx
        .iter()
        .map(|p| {
            let mut c = ClientConfig::new(
                p.id.as_str(),
                p.host.clone(),
                p.port,
                p.username.clone(),
                p.secret.expose(),
            );
            c.auth = if p.md5 {
                AuthMode::Md5
            } else {
                AuthMode::Plain
            };
            c.events = p.events.clone();
            c.ping_interval = p.ping_interval;
            c.ping_timeout = p.ping_timeout;
            c.connect_timeout = p.connect_timeout;
            c.max_packet = p.max_packet;
            c.queue_capacity = p.queue_capacity;
            c
        })
        .collect()
}

/// Completes when SIGINT or SIGTERM arrives.
async fn shutdown_signal() -> Result<(), AppError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(AppError::Signal)?;
    }
    Ok(())
}

/// Runs the daemon until SIGINT/SIGTERM, printing the call model on stdout.
pub async fn run(cfg: Config, format: Format) -> Result<(), AppError> {
    let token = CancellationToken::new();
    let signal_token = token.clone();
    let signals = tokio::spawn(async move {
        let r = shutdown_signal().await;
        info!("shutting down");
        signal_token.cancel();
        r
    });
    let stdout = std::io::stdout();
    let result = run_until(cfg, token.clone(), move |events| {
        let mut w = stdout.lock();
        for ev in events {
            if write_event(&mut w, ev, format).is_err() {
                metrics().output_errors.inc();
            }
        }
        if w.flush().is_err() {
            metrics().output_errors.inc();
        }
    })
    .await;
    signals.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::ZERO, signals).await {
        return Err(e);
    }
    result
}

/// Runs clients and the normalizer until `token` is cancelled, handing every
/// batch of model events to `output` in order. Used by `run` and by tests.
pub async fn run_until(
    cfg: Config,
    token: CancellationToken,
    mut output: impl FnMut(&[ModelEvent]) + Send,
) -> Result<(), AppError> {
    let clients = client_configs(&cfg);
    let capacity: usize = clients
        .iter()
        .map(|c| c.queue_capacity)
        .sum::<usize>()
        .max(1);
    let (tx, mut rx) = mpsc::channel::<SourceEvent>(capacity);
    let mut handles = Vec::new();
    for c in clients {
        info!(pbx = %c.pbx, host = %c.host, port = c.port, "starting AMI client");
        handles.push(client::spawn(c, tx.clone(), token.child_token()));
    }
    drop(tx);
    let mut normalizer = Normalizer::new(cfg.normalizer);
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(ev) => {
                    normalizer.handle(&ev, &mut out);
                    // Drain what is already queued before writing.
                    while out.len() < 1024 {
                        match rx.try_recv() {
                            Ok(ev) => normalizer.handle(&ev, &mut out),
                            Err(_) => break,
                        }
                    }
                }
                None => break,
            },
            _ = tick.tick() => normalizer.tick(now_epoch(), &mut out),
            _ = token.cancelled() => break,
        }
        if !out.is_empty() {
            output(&out);
            out.clear();
        }
    }
    // Let the clients log off, then drain what they had queued.
    for h in &handles {
        if tokio::time::timeout(Duration::from_secs(3), h.stopped())
            .await
            .is_err()
        {
            warn!(pbx = %h.pbx(), "AMI client did not stop in time");
        }
    }
    while let Ok(ev) = rx.try_recv() {
        normalizer.handle(&ev, &mut out);
    }
    if !out.is_empty() {
        output(&out);
    }
    let live = normalizer.live_calls();
    if live > 0 {
        info!(
            live,
            "stopping with calls in progress (they are not reported)"
        );
    }
    Ok(())
}
