//! The standard `process_*` metrics, read from `/proc/self` at every render.

use prometheus::{Counter, Gauge, IntGauge, Registry};

use super::single;

/// The standard `process_*` metrics, read from `/proc/self` when rendered.
pub struct ProcessMetrics {
    /// User + system CPU time.
    pub cpu_seconds_total: Counter,
    /// Resident set size.
    pub resident_memory_bytes: IntGauge,
    /// Virtual memory size.
    pub virtual_memory_bytes: IntGauge,
    /// Open file descriptors.
    pub open_fds: IntGauge,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: IntGauge,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: Gauge,
    /// OS threads.
    pub threads: IntGauge,
}

impl ProcessMetrics {
    pub(super) fn new(r: &Registry) -> Self {
        let int = |name: &str, help: &str| single(r, name, help, IntGauge::with_opts);
        Self {
            cpu_seconds_total: single(
                r,
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds",
                Counter::with_opts,
            ),
            resident_memory_bytes: int(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
            ),
            virtual_memory_bytes: int(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
            ),
            open_fds: int("process_open_fds", "Number of open file descriptors"),
            max_fds: int("process_max_fds", "Maximum number of open file descriptors"),
            start_time_seconds: single(
                r,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                Gauge::with_opts,
            ),
            threads: int("process_threads", "Number of OS threads in the process"),
        }
        .with_start_time_now()
    }

    /// Until `/proc` says better (it may be hidden, e.g. by systemd's
    /// `ProcSubset=pid`): the time the metrics were created, at start.
    fn with_start_time_now(self) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.start_time_seconds.set(now);
        self
    }

    /// Reads `/proc/self/stat`, `/proc/self/fd` and the descriptor limit
    /// (nothing changes where they cannot be read).
    pub fn refresh(&self) {
        if let Some(s) = proc_stat() {
            let cur = self.cpu_seconds_total.get();
            if s.cpu_seconds > cur {
                self.cpu_seconds_total.inc_by(s.cpu_seconds - cur);
            }
            self.resident_memory_bytes.set(s.rss_bytes);
            self.virtual_memory_bytes.set(s.vsize_bytes);
            self.threads.set(s.threads);
            if let Some(t) = s.start_time {
                self.start_time_seconds.set(t);
            }
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            self.open_fds
                .set(i64::try_from(d.count()).unwrap_or(i64::MAX) - 1);
        }
        #[cfg(unix)]
        {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we pass and nothing else.
            if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
                self.max_fds
                    .set(i64::try_from(lim.rlim_cur).unwrap_or(i64::MAX));
            }
        }
    }
}

struct ProcStat {
    cpu_seconds: f64,
    rss_bytes: i64,
    vsize_bytes: i64,
    threads: i64,
    start_time: Option<f64>,
}

#[cfg(unix)]
fn proc_stat() -> Option<ProcStat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Field 3 (state) is the first one after it.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    if ticks <= 0.0 || page <= 0.0 {
        return None;
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    });
    Some(ProcStat {
        cpu_seconds: (field(14)? + field(15)?) / ticks,
        threads: field(20)? as i64,
        start_time: boot.map(|b| b + field(22).unwrap_or(0.0) / ticks),
        vsize_bytes: field(23)? as i64,
        rss_bytes: (field(24)? * page) as i64,
    })
}

#[cfg(not(unix))]
fn proc_stat() -> Option<ProcStat> {
    None
}
