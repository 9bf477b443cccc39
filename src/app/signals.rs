//! The signals the daemon answers: SIGINT/SIGTERM stop it, SIGHUP reloads.

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::AppError;
use crate::http::ReloadReply;

#[cfg(unix)]
pub(super) fn spawn_signals(
    token: CancellationToken,
    reload: mpsc::Sender<ReloadReply>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(AppError::Signal)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AppError::Signal)?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let (tx, _rx) = tokio::sync::oneshot::channel();
                    if reload.send(tx).await.is_err() {
                        break;
                    }
                }
            }
        }
        info!("shutting down");
        token.cancel();
    }))
}

#[cfg(not(unix))]
pub(super) fn spawn_signals(
    token: CancellationToken,
    _reload: mpsc::Sender<ReloadReply>,
) -> Result<tokio::task::JoinHandle<()>, AppError> {
    Ok(tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        token.cancel();
    }))
}
