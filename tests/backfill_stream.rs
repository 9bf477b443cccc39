//! CDR backfill streams: a file of a million rows (load-dev's calls
//! repeated an hour apart) is read in bounded memory. Alone in its test
//! binary so that the peak RSS measured is its own.

use std::io::{BufReader, Read};
use std::path::Path;

use callhook::backfill::cdr::split_csv;
use callhook::backfill::{self, Options, Summary};
use callhook::normalize::Classifier;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn opts() -> Options {
    Options {
        now: 1795375900.0,
        ..Options::default()
    }
}

/// A `Master.csv` of `rows` lines, made from load-dev's calls repeated an
/// hour apart with fresh ids, produced on the fly.
struct Synthetic {
    /// Template rows: fields, and the three times as epoch seconds.
    template: Vec<(Vec<String>, [Option<i64>; 3])>,
    rows: usize,
    made: usize,
    buf: Vec<u8>,
    pos: usize,
}

/// `YYYY-MM-DD HH:MM:SS` of epoch seconds (UTC), without a date library
/// (days to civil date, H. Hinnant's algorithm).
fn fmt_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

impl Synthetic {
    fn new(rows: usize) -> Self {
        let cdr = root().join("tests/fixtures/ami/asterisk-20/load-dev.cdr.csv");
        let text = std::fs::read_to_string(cdr).unwrap();
        let template = text
            .lines()
            .map(|l| {
                let f = split_csv(l).unwrap();
                let t =
                    |i: usize| callhook::backfill::times::parse_local(&f[i]).map(|t| t.0 as i64);
                let times = [t(9), t(10), t(11)];
                (f, times)
            })
            .collect();
        Self {
            template,
            rows,
            made: 0,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn line(&self, i: usize, out: &mut Vec<u8>) {
        let cycle = (i / self.template.len()) as i64;
        let (f, times) = &self.template[i % self.template.len()];
        let time = |k: usize| times[k].map_or(String::new(), |t| fmt_time(t + cycle * 3600));
        let line = format!(
            "\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",\"{}\",{},\"{}\",{},{},\"{}\",\"{}\",\"c{cycle}-{}\",\"{}\",\"{}\",\"c{cycle}-{}\",{}\n",
            f[0],
            f[1],
            f[2],
            f[3],
            f[4].replace('"', "\"\""),
            f[5],
            f[6],
            f[7],
            f[8],
            time(0),
            time(1),
            time(2),
            f[12],
            f[13],
            f[14],
            f[15],
            f[16],
            f[17],
            f[18],
            f[19],
            f[20],
        );
        out.extend_from_slice(line.as_bytes());
    }
}

impl Read for Synthetic {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.made == self.rows {
                return Ok(0);
            }
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            self.pos = 0;
            while buf.len() < 64 * 1024 && self.made < self.rows {
                self.line(self.made, &mut buf);
                self.made += 1;
            }
            self.buf = buf;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A million rows with `cargo test --release` (about 7 s); 200 000 in a
/// debug build (unoptimised parsing is ten times slower), which shows the
/// same bound: the calls held open do not grow with the file.
#[test]
fn a_million_rows_stream_in_bounded_memory() {
    let rows = if cfg!(debug_assertions) {
        200_000
    } else {
        1_000_000
    };
    let started = std::time::Instant::now();
    let mut calls = 0u64;
    let mut summary = Summary::default();
    backfill::for_each_call(
        BufReader::new(Synthetic::new(rows)),
        &Classifier::default(),
        &opts(),
        &mut summary,
        |_, _, _| {
            calls += 1;
            Ok(())
        },
    )
    .unwrap();
    let cycles = rows / 276;
    assert_eq!(summary.rows, rows as u64);
    assert_eq!(summary.malformed, 0);
    assert!(calls >= cycles as u64 * 150, "{calls}");
    assert_eq!(summary.late_rows, 0);
    assert_eq!(summary.forced_groups, 0);
    // Calls an hour apart and a 4 h window: about five hours of calls open.
    assert!(
        summary.peak_open_calls <= 6 * 150,
        "peak {} open calls",
        summary.peak_open_calls
    );
    if let Some(kib) = peak_rss_kib() {
        assert!(kib < 64 * 1024, "peak RSS {kib} KiB");
    }
    eprintln!(
        "{rows} rows, {calls} calls in {:.1?} (peak {} open calls, peak RSS {:?} KiB)",
        started.elapsed(),
        summary.peak_open_calls,
        peak_rss_kib()
    );
}
