//! Delivering what a one-shot command enqueued (`replay --config`,
//! `backfill --deliver`): a dispatcher on the outbox until nothing is
//! waiting, with progress on stderr while a slow CRM keeps us waiting, an
//! optional deadline, and Ctrl-C.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use callhook::app;
use callhook::config::Config;
use callhook::deliver::outbox::{Outbox, OutboxStats};

use super::exit::{fail, CliResult, Code};

/// Without a terminal: the first progress line after this long…
const FIRST_LINE: Duration = Duration::from_secs(1);
/// … then one this often.
const LINE_EVERY: Duration = Duration::from_secs(5);
/// How long a stopping dispatcher may finish an attempt in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the outbox is looked at.
const POLL: Duration = Duration::from_millis(200);

/// Where the wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Idle,
    Interrupted,
    TimedOut,
}

fn progress_text(start: &OutboxStats, s: &OutboxStats, elapsed: Duration) -> String {
    let waiting = s.pending + s.inflight;
    format!(
        "waiting for the targets: {} delivered, {waiting} waiting ({} in flight{}), {} dead, {} expired, {}s elapsed",
        s.done.saturating_sub(start.done),
        s.inflight,
        s.oldest_pending_age
            .map(|a| format!(", oldest {a:.0}s"))
            .unwrap_or_default(),
        s.dead.saturating_sub(start.dead),
        s.expired.saturating_sub(start.expired),
        elapsed.as_secs()
    )
}

/// Runs a dispatcher on `outbox` until nothing is waiting, `timeout` has
/// passed, or Ctrl-C. A timeout or an interruption is a failure (status 1)
/// naming what is still waiting; it stays in the outbox for a daemon or a
/// later run. So is a run that made deliveries dead.
pub fn deliver_until_idle(cfg: &Config, outbox: Outbox, timeout: Option<Duration>) -> CliResult {
    let targets = cfg.targets.clone();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let outbox = Arc::new(outbox);
        let start = outbox.stats().await?;
        let (_tx, rx) = tokio::sync::watch::channel(targets);
        let token = tokio_util::sync::CancellationToken::new();
        let d = callhook::deliver::spawn(outbox.clone(), rx, token.clone());
        let began = Instant::now();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            if let Ok(s) = ProgressStyle::with_template("{spinner} {msg}") {
                b.set_style(s);
            }
            b
        });
        let mut next_line = began + FIRST_LINE;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let (end, last) = loop {
            let s = outbox.stats().await?;
            if s.pending + s.inflight == 0 {
                break (End::Idle, s);
            }
            let text = progress_text(&start, &s, began.elapsed());
            match &bar {
                Some(b) => b.set_message(text),
                None if Instant::now() >= next_line => {
                    eprintln!("{text}");
                    next_line = Instant::now() + LINE_EVERY;
                }
                None => {}
            }
            let sleep = tokio::time::sleep(POLL);
            tokio::select! {
                _ = sleep => {}
                _ = &mut ctrl_c => break (End::Interrupted, s),
                _ = async { match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                } } => break (End::TimedOut, outbox.stats().await?),
            }
        };
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        token.cancel();
        // Idle: nothing is in flight and this is immediate. After a timeout
        // or Ctrl-C an attempt still in flight is abandoned after a short
        // grace (its row stays in flight; the next sender, a daemon or
        // another run, sends it again: at-least-once).
        let _ = tokio::time::timeout(STOP_GRACE, d.stopped()).await;
        let after = outbox.stats().await.unwrap_or(last);
        outbox.close();
        let summary = format!(
            "{} delivered, {} dead, {} expired",
            after.done.saturating_sub(start.done),
            after.dead.saturating_sub(start.dead),
            after.expired.saturating_sub(start.expired)
        );
        let waiting = after.pending + after.inflight;
        match end {
            End::Idle if after.dead > start.dead => Err(fail!(
                Code::Runtime,
                "{summary}: the dead ones are listed by `callhook deliveries list --dead`"
            )),
            End::Idle => {
                eprintln!("done: {summary}");
                Ok(())
            }
            End::Interrupted => Err(fail!(
                Code::Runtime,
                "interrupted: {summary}; {waiting} still waiting in the outbox (a running daemon or the next run delivers them)"
            )),
            End::TimedOut => Err(fail!(
                Code::Runtime,
                "timed out after {}s: {summary}; {waiting} still waiting in the outbox (a running daemon or the next run delivers them)",
                timeout.unwrap_or_default().as_secs_f64()
            )),
        }
    })
}

/// The state_dir lock for a one-shot command that sends from the outbox, so
/// that it never sends beside a daemon (which would hand out the same
/// deliveries twice).
pub fn lock_for_sending(cfg: &Config, what: &str, instead: &str) -> CliResult<std::fs::File> {
    match app::lock_state_dir(&cfg.state_dir) {
        Ok(f) => Ok(f),
        Err(app::AppError::Locked { dir }) => Err(fail!(
            Code::Runtime,
            "a callhook daemon (or another command) is sending from {}: {what} would send beside it; {instead}",
            dir.display()
        )),
        Err(e) => Err(e.into()),
    }
}
