//! The daemon in-process, for the integration tests that need its insides
//! (the outbox, the presence hub, an observer): a config from YAML text
//! with every error in the panic, and `app::run_until` started on the
//! test's runtime.
#![allow(dead_code)]

use std::path::Path;

use callhook::app::{self, AppError, RunOptions, Running};
use callhook::config::Config;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// `text` as a config (relative paths from `base`); panics with every
/// error, one a line.
pub fn config(text: &str, base: &Path) -> Config {
    Config::from_text(text, base).unwrap_or_else(|e| {
        panic!(
            "{}",
            e.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        )
    })
}

/// A started in-process daemon.
pub struct App {
    /// What `run_until` handed out once started.
    pub running: Running,
    /// Cancel to stop it.
    pub token: CancellationToken,
    /// Its run, to await after the cancel.
    pub task: JoinHandle<Result<(), AppError>>,
}

/// Runs `cfg` with `opts` until its token is cancelled; returns once it
/// started.
pub async fn start(cfg: Config, opts: RunOptions) -> App {
    let token = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::channel(1);
    let (run_tx, mut run_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(app::run_until(
        cfg,
        opts,
        token.clone(),
        reload_tx,
        reload_rx,
        move |r| {
            let _ = run_tx.send(r);
        },
    ));
    let running = run_rx.recv().await.expect("the daemon started");
    App {
        running,
        token,
        task,
    }
}
