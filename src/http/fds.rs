//! File-descriptor headroom: HTTP clients must never starve the AMI
//! clients, the outbox or outgoing webhooks of descriptors.
//!
//! At start the daemon raises its soft `RLIMIT_NOFILE` to the hard limit
//! ([`raise_nofile_limit`]), then splits what it has ([`budget`]): a
//! reserve for everything that is not an inbound HTTP connection (AMI
//! sockets, SQLite files, the lock file, outgoing webhook connections, the
//! runtime's own descriptors), and caps for the listeners that fit in the
//! rest. Each listener then refuses or evicts connections beyond its cap
//! (see [`super::server`]), so an accept never takes the last descriptors.

/// The descriptor limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit now in force.
    pub soft: u64,
    /// The hard limit.
    pub hard: u64,
    /// The soft limit before, when it was raised.
    pub raised_from: Option<u64>,
}

/// Never ask for more than this (Linux's default `fs.nr_open`).
const CEILING: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20).
#[cfg(unix)]
pub fn raise_nofile_limit() -> std::io::Result<FdLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // rlim_t is u64 on Linux.
    let (soft, hard): (u64, u64) = (lim.rlim_cur, lim.rlim_max);
    let want = hard.min(CEILING);
    if soft >= want {
        return Ok(FdLimit {
            soft,
            hard,
            raised_from: None,
        });
    }
    let new = libc::rlimit {
        rlim_cur: want,
        rlim_max: lim.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FdLimit {
        soft: want,
        hard,
        raised_from: Some(soft),
    })
}

/// Without `RLIMIT_NOFILE`: nothing to raise, a generous guess.
#[cfg(not(unix))]
pub fn raise_nofile_limit() -> std::io::Result<FdLimit> {
    Ok(FdLimit {
        soft: 8192,
        hard: 8192,
        raised_from: None,
    })
}

/// Descriptors this process has open now (`/proc/self/fd`), if known.
pub fn open_fds() -> Option<usize> {
    // The directory handle itself is one of the entries.
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1))
}

/// Descriptors kept for everything but inbound HTTP: what is open now,
/// plus 128 (runtime, SQLite's database, WAL and shared-memory files for
/// each connection, temporary files, the notify socket, spare), 2 per PBX
/// (its socket while a reconnect replaces it) and 2 per concurrent request
/// a target may have (the connection and its replacement).
pub fn reserve(open_now: usize, pbx: usize, target_concurrency: usize) -> usize {
    open_now + 128 + 2 * pbx + 2 * target_concurrency
}

/// Connection caps of the listeners, as they fit in the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Cap of the `listen` listener.
    pub listen: usize,
    /// Cap of the `admin.listen` listener (0 when there is none).
    pub admin: usize,
    /// True when the configured caps had to be lowered.
    pub lowered: bool,
}

/// Smallest cap a listener is given, even when the limit is tiny.
const MIN_CAP: usize = 4;

/// Splits `limit - reserved` between the listeners: the admin listener
/// (when `want_admin` is some) gets its configured cap, or an eighth of the
/// room when that is less; `listen` gets its configured cap, or the rest.
pub fn budget(
    limit: u64,
    reserved: usize,
    want_listen: usize,
    want_admin: Option<usize>,
) -> Budget {
    let room = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved);
    let admin = match want_admin {
        None => 0,
        Some(w) => w.min((room / 8).max(MIN_CAP)).max(1),
    };
    let listen = want_listen
        .min(room.saturating_sub(admin).max(MIN_CAP))
        .max(1);
    Budget {
        listen,
        admin,
        lowered: listen < want_listen || want_admin.is_some_and(|w| admin < w),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_fit_in_the_limit() {
        // systemd's default soft limit, one PBX, one target of concurrency 4.
        let r = reserve(12, 1, 4);
        let b = budget(1024, r, 1024, Some(64));
        assert_eq!(b.admin, 64);
        assert!(b.listen + b.admin + r <= 1024, "{b:?} + {r}");
        assert!(b.lowered);
        // Plenty of descriptors: the configured caps.
        let b = budget(65536, r, 1024, Some(64));
        assert_eq!((b.listen, b.admin, b.lowered), (1024, 64, false));
        // A tiny limit still leaves each listener a few connections.
        let b = budget(100, r, 1024, None);
        assert_eq!((b.listen, b.admin), (MIN_CAP, 0));
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_limit() {
        let l = raise_nofile_limit().unwrap();
        assert_eq!(l.soft, l.hard.min(CEILING));
        assert!(open_fds().is_some_and(|n| n >= 3));
    }
}
