//! systemd's notification protocol (`sd_notify`), spoken directly: one
//! datagram per message to the unix socket named by `$NOTIFY_SOCKET` (a
//! path, or `@name` for an abstract socket). Without the variable every
//! call does nothing, so the daemon runs the same outside systemd.
//!
//! - `READY=1` once the outbox is open, the listeners are bound and the
//!   sources are started (`Type=notify` units are "started" only then);
//! - `WATCHDOG=1` every half `$WATCHDOG_USEC` (`WatchdogSec=`), but only
//!   while the normalizer loop shows it is alive ([`Heartbeat`]): a wedged
//!   daemon stops pinging and systemd restarts it;
//! - `STOPPING=1` when shutdown begins;
//! - `STATUS=…` a one-line summary (`systemctl status`).

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where notifications go (nowhere without `$NOTIFY_SOCKET`).
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum Target {
    Path(std::path::PathBuf),
    #[cfg(target_os = "linux")]
    Abstract(Vec<u8>),
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the
    /// watchdog is ours only when `WATCHDOG_PID` is unset or our pid).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let target = var("NOTIFY_SOCKET").and_then(|s| {
            if let Some(name) = s.strip_prefix('@') {
                #[cfg(target_os = "linux")]
                return Some(Target::Abstract(name.as_bytes().to_vec()));
                #[cfg(not(target_os = "linux"))]
                return {
                    let _ = name;
                    None
                };
            }
            s.starts_with('/').then(|| Target::Path(s.into()))
        });
        let ours = var("WATCHDOG_PID")
            .is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = var("WATCHDOG_USEC")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|us| *us > 0 && ours)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self {
            target: None,
            watchdog: None,
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout (`WatchdogSec=`) when it applies to us.
    pub fn watchdog_timeout(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.target.is_some())
    }

    /// Sends one message (`KEY=value` lines); errors are logged, never fatal.
    pub fn send(&self, msg: &str) {
        let Some(t) = &self.target else {
            return;
        };
        let r = UnixDatagram::unbound().and_then(|s| match t {
            Target::Path(p) => s.send_to(msg.as_bytes(), p),
            #[cfg(target_os = "linux")]
            Target::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                s.send_to_addr(msg.as_bytes(), &addr)
            }
        });
        if let Err(e) = r {
            tracing::warn!(error = %e, "cannot notify the service manager ($NOTIFY_SOCKET)");
        }
    }

    /// `READY=1` with a status line. The returned proof is what
    /// [`watchdog`] needs: no `WATCHDOG=1` can precede `READY=1`.
    pub fn ready(&self, status: &str) -> Ready {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
        Ready(())
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// `WATCHDOG=1`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Proof of life of a loop that must keep turning: the loop calls
/// [`Heartbeat::beat`], the watchdog reads [`Heartbeat::age`].
#[derive(Debug, Clone)]
pub struct Heartbeat {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::new()
    }
}

impl Heartbeat {
    /// A heartbeat that just beat.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The loop is alive now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// Proof that `READY=1` was sent ([`Notifier::ready`]).
#[derive(Debug)]
#[must_use = "the watchdog needs it"]
pub struct Ready(());

/// Pings the watchdog every half timeout while `alive` beat within the
/// timeout; returns when `stop` is cancelled. Without a watchdog, returns
/// at once. Takes the proof of [`Notifier::ready`]: systemd ignores (and
/// the ordering test refuses) a `WATCHDOG=1` before `READY=1`.
pub async fn watchdog(
    notifier: Arc<Notifier>,
    _ready: Ready,
    alive: Heartbeat,
    stop: tokio_util::sync::CancellationToken,
) {
    let Some(timeout) = notifier.watchdog_timeout() else {
        return;
    };
    // The first ping half a timeout from now, not at once: `READY=1` is
    // sent after this task is spawned and must come first.
    let half = timeout / 2;
    let mut every = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let age = alive.age();
        if age < timeout {
            notifier.watchdog();
        } else {
            tracing::error!(
                stalled_for = ?age,
                "the event loop is stalled: not pinging the watchdog (systemd will restart the service)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::Builder::new()
            .prefix("callhook-notify-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            target: Some(Target::Path(path)),
            watchdog: Some(Duration::from_secs(10)),
        };
        let _ = n.ready("up:\n2 PBX");
        let mut buf = [0u8; 256];
        let k = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=up: 2 PBX");
        n.stopping();
        let k = rx.recv(&mut buf).unwrap();
        assert!(buf[..k].starts_with(b"STOPPING=1"));
        assert_eq!(n.watchdog_timeout(), Some(Duration::from_secs(10)));
        assert!(Notifier::disabled().watchdog_timeout().is_none());
    }

    #[test]
    fn heartbeat_age() {
        let h = Heartbeat::new();
        h.beat();
        assert!(h.age() < Duration::from_secs(5));
    }
}
