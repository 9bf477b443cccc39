//! The progress bar on stderr (drawn only when it is a terminal).

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Options, Summary};

pub(super) struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last: u64,
}

impl Progress {
    /// A bar for `opts`; `bytes` says whether positions are bytes (a file)
    /// or rows (a table).
    pub(super) fn new(opts: &Options, bytes: bool) -> Self {
        let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
            let bar = match opts.total_bytes {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let style = match (opts.total_bytes.is_some(), bytes) {
                (true, _) => "{spinner} {elapsed_precise} [{bar:20}] {percent:>3}% {msg}",
                (false, true) => "{spinner} {elapsed_precise} {bytes} {msg}",
                (false, false) => "{spinner} {elapsed_precise} {msg}",
            };
            if let Ok(s) = ProgressStyle::with_template(style) {
                bar.set_style(s);
            }
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last: 0,
        }
    }

    pub(super) fn update(&mut self, pos: u64, s: &Summary, force: bool) {
        let Some(bar) = &self.bar else { return };
        if !force && s.rows < self.last + 500 {
            return;
        }
        self.last = s.rows;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        bar.set_position(pos);
        bar.set_message(format!(
            "{} rows, {:.0}/s, {} calls",
            s.rows,
            s.rows as f64 / secs,
            s.calls
        ));
    }

    /// Runs `f` (a log line) without garbling the bar.
    pub(super) fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
