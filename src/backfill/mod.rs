//! CDR backfill: Asterisk's `Master.csv` → finished call records → the
//! same rules and durable outbox as live traffic.
//!
//! ```text
//! Master.csv ─▶ CdrReader ─▶ Grouper ─▶ record::build ─▶ CallRecord ─▶ RuleSet::evaluate ─▶ Outbox::submit
//!  (rows, line numbers,      (rows of one   (live-model          (scope: call,      (same idempotency keys:
//!   malformed ones skipped)   call, bounded)  semantics)           state: hungup)      sent once)
//! ```
//!
//! [`run`] streams the file ([`cdr`] reads it, [`group`] groups the rows of
//! a call in bounded memory), turns every call into a [`CallRecord`]
//! ([`record::build`]), keeps the calls that *ended* in `[since, until)`,
//! evaluates the rules on each record (number rewriting included, so only
//! `scope: call, state: hungup` rules match) and either prints the requests
//! ([`Destination::Print`], `--dry-run`) or enqueues them
//! ([`Destination::Outbox`]): a request whose idempotency key the outbox
//! already holds is not enqueued again ("already sent"), which is what
//! makes an hourly and a nightly run over overlapping periods, and a live
//! daemon seeing the same calls, send each record once.
//!
//! # Never twice
//!
//! - The outbox remembers a key for `outbox.dedupe_window` (default 7 d)
//!   from its first enqueue. A call that ended earlier than that may have
//!   been sent and forgotten, so a backfill (a dry run too) refuses a `since` further back
//!   than `dedupe_window − 15 min` ([`BackfillError::BeyondDedupeWindow`]);
//!   without `since` it defaults to that. To backfill a year nightly, set
//!   `outbox: { dedupe_window: 400d }`.
//! - A request without an idempotency key cannot be recognised later, so it
//!   is not enqueued (counted as `unkeyed`, with a warning naming the rule).
//! - A request whose rule `max_age` has passed (event time + `max_age`) is
//!   not enqueued (`stale`): the rule said it is worthless that late. Others
//!   get `created_at` = now, so their retry budget starts now.
//! - The same call must give the same key live and here; with
//!   `rules/phonecalls.yaml` the key is start second (UTC) + caller +
//!   dialed number, all of which CDR gives exactly as the live model does
//!   (see below). CDR times are local: `timezone` says how to read them.
//!   Two live-side limits remain: a call the daemon only learned about
//!   after a reconnect has an estimated start (from the channel's age), and
//!   on Asterisk ≤ 11 a call the stream leaves ambiguous (see the README)
//!   may be grouped differently live; either can give another key, and the
//!   CRM's own duplicate check (same start, source, destination) is then
//!   the last line of defence.
//! - A backfill beside a running daemon opens the outbox with
//!   [`Outbox::open_shared`], which leaves the daemon's attempts in flight
//!   alone (`open` would hand them out again).
//!
//! # CDR → call record
//!
//! The rows of a call (same linkedid; see [`group`] for files without it)
//! are ordered by `start`, then `sequence` (or file order). The *first
//! channel* is the row whose uniqueid equals the linkedid (else the first
//! row); the rows whose party A (`channel`) is that channel are its rows.
//! `h`-extension rows (`dst = h`) are ignored except for times. Channels
//! are classified with the configuration's `classify:` rules
//! (`normalize::channel::Classifier`), a channel's `dcontext` serving as
//! its context for party A; `Local/EXT@ctx` stands for `EXT` when that is
//! an extension number.
//!
//! | record field | from CDR |
//! |---|---|
//! | `session_id` | linkedid (Asterisk ≤ 11 too: it is the first channel's uniqueid, which is what the live model uses); else party A's uniqueid; else `cdr-<start epoch>-<channel>` |
//! | `direction` | as live: first channel a trunk → `incoming`; an extension → `outgoing` if any other row's channel or dstchannel is a trunk, else `internal`; originated (first row's `lastapp` is `AppDial*`, or a Local first channel) → `outgoing` unless only extensions take part |
//! | `caller_number` | incoming: the first channel's `src`; otherwise the calling **extension, from its channel name** (`src` may be the company number the outbound route set) |
//! | `caller_name` | the name in that row's `clid` |
//! | `dialed_number` | the first channel's first non-empty `dst` (not `h`) |
//! | `queue` | the first argument of a `Queue` row's `lastdata` |
//! | `extensions_rung` | extensions in `dstchannel`, in order, without repeats (an originated call's phone first) |
//! | `answered_by`, `answered_at` | the earliest `ANSWERED` row whose `dstchannel` is a phone (its extension) or a trunk (`external`); `Transferred Call` rows are not answers; the PBX answering (no `dstchannel`) never is |
//! | `final_answered_by` | of those, the one whose row ended last (later answer on a tie); trunks only on outgoing calls |
//! | `disposition` | `ANSWERED` if answered; else, with a queue: `ABANDONED` when the caller's channel was still in `Queue` at its end, else `NO ANSWER`; else from the rows' dispositions: any `NO ANSWER` → `NO ANSWER`, else `BUSY`, else `FAILED`/`CONGESTION` → `FAILED`, else `NO ANSWER` |
//! | `started_at`, `ended_at` | earliest `start`, latest `end` (whole seconds, at the CDR time zone) |
//! | `duration`, `billsec` | `ended − started`, `ended − answered_at` (0 unanswered) |
//! | `end_reason` | `hangup` |
//! | `approximate` | true when `answered_at` is an estimate (queue calls, below) |
//! | `recording_url` | the first channel's `userfield` when it is an `http(s)://` URL, else null |
//! | `extra` | empty |
//!
//! **What CDR cannot tell** (and what is done):
//!
//! - *Times* have whole seconds, so `duration`/`billsec` can differ from
//!   the live values by up to a second. The start *second* is the same as
//!   the live model's (both are the first channel's creation), which is
//!   what keys use.
//! - *Queue answers*: a queue row's `answer` is the PBX's `Answer()` before
//!   the queue. The member's answer is estimated as the end of the last
//!   other member attempt that ended before the answering member's row
//!   (ring-all members are cut at that instant), else the PBX answer;
//!   `approximate` is set. On the Asterisk 20 captures the estimate is
//!   within 1 s; on Asterisk 11 (one row per queue call) it is the PBX
//!   answer, so `billsec` includes the wait, as CDR's does.
//! - *Asterisk 11 queues* write only the answering member's row: the other
//!   members rung are unknown (`extensions_rung` has only the answerer, or
//!   nobody for an abandoned call).
//! - *Click-to-call* (Originate) that was answered looks, in CDR, like the
//!   phone dialing out: same `direction` (`outgoing`), caller, dialed number
//!   and key, but the phone is missing from `extensions_rung`, and
//!   `answered_at` is when the phone answered (CDR's `answer`), not the
//!   outside party. An unanswered click-to-call is recognised by its
//!   `AppDial` row.
//! - *Blind transfers on Asterisk 12+* rewrite the first row's `dst` to the
//!   transfer target: `dialed_number` is then that extension, not the DID.
//! - *Queue timeouts vs abandons*: a caller still in `Queue` at the end is
//!   `ABANDONED`; one that left the queue by timeout and hung up elsewhere
//!   is `NO ANSWER` (the live model decides with `QueueCallerAbandon`).
//! - *Without linkedid* (classic columns), rows group per party A channel:
//!   an attended transfer's consultation leg (a Local `;2` half) cannot be
//!   joined to its call and is skipped (`not calls`); session ids are then
//!   party A's uniqueid (or synthetic without `loguniqueid`), so rules keyed
//!   on `session_id` do not match live ones (start + numbers still do).
//!
//! # Time zone
//!
//! [`CdrTimezone`]: `Fixed(offset)` (default UTC, right for `usegmtime=yes`
//! or a PBX running in UTC) or `Auto`, which reads each call's offset from
//! its uniqueid's epoch (follows daylight saving). With a fixed offset,
//! calls whose uniqueid implies another offset are counted
//! ([`Summary::timezone_mismatch`]) so a wrong setting is noticed.

pub mod cdr;
pub mod group;
pub mod record;
pub mod times;

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, IsTerminal, Write};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::deliver::outbox::{EnqueueOutcome, EnqueueReceipt};
use crate::deliver::{DeliveryRequest, Outbox, OutboxError};
use crate::model::{CallRecord, ModelEvent};
use crate::normalize::Classifier;
use crate::replay::Format;
use crate::rules::RuleSet;

pub use self::cdr::{CdrReader, CdrRow, RowError};
pub use self::group::{Grouper, DEFAULT_MAX_OPEN};
pub use self::record::{build, Built, NotACall};
pub use self::times::{parse_bound, CdrTimezone};

/// How far inside the outbox's dedupe window `since` must stay.
pub const DEDUPE_MARGIN: f64 = 15.0 * 60.0;

/// Requests enqueued per outbox batch.
const BATCH: usize = 256;
/// Batches awaiting their commit at most.
const IN_FLIGHT: usize = 8;
/// Malformed rows kept for the summary (all are logged).
const KEEP_ERRORS: usize = 20;

/// What a run does.
#[derive(Debug, Clone)]
pub struct Options {
    /// PBX id stamped on records (the live daemon's id for this PBX).
    pub pbx: String,
    /// How to read CDR times.
    pub timezone: CdrTimezone,
    /// Only calls that ended at or after this instant (epoch seconds).
    pub since: Option<f64>,
    /// Only calls that ended before this instant.
    pub until: Option<f64>,
    /// Grouping window in seconds of CDR time (see [`group`]).
    pub window: f64,
    /// Most calls grouped at once (see [`group`]).
    pub max_open: usize,
    /// Show a progress bar on stderr (only drawn when it is a terminal).
    pub progress: bool,
    /// Size of the input in bytes, for the progress bar.
    pub total_bytes: Option<u64>,
    /// The current time (epoch seconds).
    pub now: f64,
    /// How long the outbox remembers idempotency keys (`outbox.dedupe_window`,
    /// seconds): bounds the default and the earliest `since` of a dry run
    /// exactly as of a real one (a real run uses its outbox's setting).
    pub dedupe_window: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pbx: "main".into(),
            timezone: CdrTimezone::default(),
            since: None,
            until: None,
            window: 4.0 * 3600.0,
            max_open: DEFAULT_MAX_OPEN,
            progress: false,
            total_bytes: None,
            now: crate::source::now_epoch(),
            dedupe_window: crate::deliver::outbox::OutboxOptions::default()
                .dedupe_window
                .as_secs_f64(),
        }
    }
}

/// Where the rules' requests go.
pub enum Destination<'a> {
    /// Printed (`--dry-run`), with [`crate::replay::write_request`].
    Print {
        /// The output.
        out: &'a mut dyn Write,
        /// Text or JSON lines.
        format: Format,
    },
    /// Enqueued into the durable outbox.
    Outbox(&'a Outbox),
}

/// A backfill failure (bad rows are not failures: they are counted).
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The input could not be read.
    #[error("reading the CDR input after line {line}: {source}")]
    Read {
        /// Last line read.
        line: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the dry-run output failed.
    #[error("writing the output: {0}")]
    Write(#[source] std::io::Error),
    /// The outbox failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    /// `since` reaches further back than the outbox remembers keys.
    #[error(
        "--since reaches back {since_ago}, but the outbox remembers idempotency keys for only {window} \
         (outbox.dedupe_window): calls older than that may already have been sent and would be sent \
         again. Use a later --since, or raise outbox.dedupe_window in the config (e.g. 400d to \
         backfill a year)"
    )]
    BeyondDedupeWindow {
        /// How far back `since` is, e.g. `30d 0h`.
        since_ago: String,
        /// The window, e.g. `7d 0h`.
        window: String,
    },
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Data lines read (blank lines and a header excluded).
    pub rows: u64,
    /// Rows skipped as malformed.
    pub malformed: u64,
    /// The first malformed rows (all are logged).
    pub errors: Vec<RowError>,
    /// Call records built.
    pub calls: u64,
    /// Calls that ended outside `[since, until)`.
    pub out_of_range: u64,
    /// Rows of those calls.
    pub rows_out_of_range: u64,
    /// Groups of rows that are not a call of their own ([`NotACall`]).
    pub not_calls: u64,
    /// Rows that arrived after their call was handed out ([`group`]).
    pub late_rows: u64,
    /// Calls handed out early because `max_open` was reached.
    pub forced_groups: u64,
    /// Most calls held open at once while grouping (the memory bound).
    pub peak_open_calls: usize,
    /// Calls whose uniqueid implies another UTC offset than the one used.
    pub timezone_mismatch: u64,
    /// The offsets those ids imply (e.g. `+02:00`).
    pub implied_offsets: BTreeSet<String>,
    /// Requests the rules produced for the calls in range.
    pub requests: u64,
    /// Enqueued.
    pub queued: u64,
    /// Not enqueued: the outbox already had their idempotency key (the sum
    /// of the four below).
    pub already_sent: u64,
    /// … and that delivery is still waiting (pending or in flight).
    pub already_queued: u64,
    /// … and that delivery was delivered.
    pub already_delivered: u64,
    /// … and that delivery is dead or expired (`callhook deliveries list
    /// --dead`; a backfill does not try again).
    pub already_failed: u64,
    /// … and that delivery finished longer than `outbox.done_retention`
    /// ago (its row is pruned, the key remembered).
    pub already_pruned: u64,
    /// Not enqueued: no idempotency key (see the module docs).
    pub unkeyed: u64,
    /// Not enqueued: the rule's `max_age` had passed.
    pub stale: u64,
    /// Not enqueued: refused by the outbox (full) or the template failed.
    pub failed: u64,
    /// `since` as used (epoch seconds), when there was one.
    pub since: Option<f64>,
    /// True when `since` was not given and defaulted to the dedupe window.
    pub since_defaulted: bool,
    /// True when the requests were printed, not enqueued.
    pub dry_run: bool,
}

impl Summary {
    /// Rows skipped for any reason.
    pub fn skipped_rows(&self) -> u64 {
        self.malformed + self.rows_out_of_range + self.late_rows
    }

    fn add(&mut self, o: EnqueueOutcome) {
        self.queued += o.inserted as u64;
        self.already_sent += o.duplicates as u64;
        self.already_queued += o.duplicates_waiting as u64;
        self.already_delivered += o.duplicates_delivered as u64;
        self.already_failed += o.duplicates_failed as u64;
        self.already_pruned += o.duplicates_pruned as u64;
        self.failed += o.rejected_full as u64;
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "read {} rows: {} calls; skipped {} rows ({} malformed, {} outside the period, {} late), {} not calls",
            self.rows,
            self.calls,
            self.skipped_rows(),
            self.malformed,
            self.rows_out_of_range,
            self.late_rows,
            self.not_calls
        )?;
        let in_period = self.calls - self.out_of_range.min(self.calls);
        if self.dry_run {
            return write!(
                f,
                "{in_period} calls in the period, {} requests printed (dry run: nothing enqueued), {} failed",
                self.requests, self.failed
            );
        }
        write!(
            f,
            "{in_period} calls in the period, {} requests: {} queued, {} already delivered, {} already queued",
            self.requests, self.queued, self.already_delivered, self.already_queued
        )?;
        if self.already_failed > 0 {
            write!(
                f,
                ", {} already dead or expired (not retried: see `callhook deliveries list --dead`)",
                self.already_failed
            )?;
        }
        if self.already_pruned > 0 {
            write!(
                f,
                ", {} already done longer than outbox.done_retention ago",
                self.already_pruned
            )?;
        }
        write!(f, ", {} failed", self.failed)?;
        if self.unkeyed > 0 {
            write!(f, ", {} without idempotency key (not sent)", self.unkeyed)?;
        }
        if self.stale > 0 {
            write!(f, ", {} past their rule's max_age (not sent)", self.stale)?;
        }
        Ok(())
    }
}

/// `30d 4h`, `5h 12m`, `40s`.
pub fn human_secs(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The effective `since` when enqueuing: the given one if the outbox still
/// remembers keys that old, the edge of the window when none is given.
pub fn enqueue_since(
    since: Option<f64>,
    now: f64,
    dedupe_window: f64,
) -> Result<(f64, bool), BackfillError> {
    let edge = now - (dedupe_window - DEDUPE_MARGIN).max(0.0);
    match since {
        None => Ok((edge, true)),
        Some(s) if s >= edge => Ok((s, false)),
        Some(s) => Err(BackfillError::BeyondDedupeWindow {
            since_ago: human_secs(now - s),
            window: human_secs(dedupe_window),
        }),
    }
}

struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last: u64,
}

impl Progress {
    fn new(opts: &Options) -> Self {
        let bar = (opts.progress && std::io::stderr().is_terminal()).then(|| {
            let bar = match opts.total_bytes {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let style = if opts.total_bytes.is_some() {
                "{spinner} {elapsed_precise} [{bar:20}] {percent:>3}% {msg}"
            } else {
                "{spinner} {elapsed_precise} {bytes} {msg}"
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

    fn update(&mut self, pos: u64, s: &Summary, force: bool) {
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
    fn suspend(&self, f: impl FnOnce()) {
        match &self.bar {
            Some(b) => b.suspend(f),
            None => f(),
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Sums the render-error counters of the rules (failures inside
/// [`RuleSet::evaluate`] are logged and counted there).
fn render_errors(rules: &RuleSet) -> u64 {
    let m = crate::metrics::metrics();
    rules
        .names()
        .iter()
        .map(|n| m.render_errors.with_label_values(&[n]).get())
        .sum()
}

/// Reads CDR rows from `input` and calls `on_call` for every call record
/// (in or out of the period: `in_range` tells). The core of [`run`]; also
/// useful alone (tests, other outputs).
pub fn for_each_call<R: BufRead>(
    input: R,
    classifier: &Classifier,
    opts: &Options,
    summary: &mut Summary,
    mut on_call: impl FnMut(CallRecord, bool, &mut Summary) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    let mut reader = CdrReader::new(input);
    let mut grouper = Grouper::new(opts.window, opts.max_open);
    let mut progress = Progress::new(opts);
    let mut groups: Vec<Vec<CdrRow>> = Vec::new();
    let mut handle = |groups: &mut Vec<Vec<CdrRow>>, summary: &mut Summary| {
        for rows in groups.drain(..) {
            let n = rows.len() as u64;
            match build(rows, classifier, &opts.pbx, &opts.timezone) {
                Ok(b) => {
                    summary.calls += 1;
                    if let Some(o) = b.offset_mismatch {
                        summary.timezone_mismatch += 1;
                        summary.implied_offsets.insert(times::offset_text(o));
                    }
                    let end = b.record.ended_at.0;
                    let in_range =
                        opts.since.is_none_or(|s| end >= s) && opts.until.is_none_or(|u| end < u);
                    if !in_range {
                        summary.out_of_range += 1;
                        summary.rows_out_of_range += n;
                    }
                    on_call(b.record, in_range, summary)?;
                }
                Err(_) => summary.not_calls += 1,
            }
        }
        Ok::<(), BackfillError>(())
    };
    loop {
        let next = reader.next_row().map_err(|source| BackfillError::Read {
            line: reader.lines(),
            source,
        })?;
        let Some(row) = next else { break };
        summary.rows += 1;
        match row {
            Ok(row) => {
                if let Some(late) = grouper.push(row, &mut groups) {
                    progress.suspend(|| {
                        tracing::warn!(
                            line = late.line,
                            "CDR row for a call already finished (longer than the grouping window?): skipped"
                        )
                    });
                }
            }
            Err(e) => {
                summary.malformed += 1;
                progress.suspend(|| tracing::warn!("skipping malformed CDR row: {e}"));
                if summary.errors.len() < KEEP_ERRORS {
                    summary.errors.push(e);
                }
            }
        }
        handle(&mut groups, summary)?;
        progress.update(reader.position(), summary, false);
    }
    grouper.finish(&mut groups);
    handle(&mut groups, summary)?;
    let gs = grouper.stats();
    summary.late_rows = gs.late;
    summary.forced_groups = gs.forced;
    summary.peak_open_calls = gs.peak_open;
    progress.update(reader.position(), summary, true);
    progress.finish();
    Ok(())
}

/// Runs a backfill: reads `input` (a `Master.csv`), builds the calls,
/// applies `rules` and sends the requests to `dest`. Blocking (call it
/// outside async code or in `spawn_blocking`); the outbox's own thread
/// does the writing.
pub fn run<R: BufRead>(
    input: R,
    classifier: &Classifier,
    rules: &RuleSet,
    opts: &Options,
    dest: Destination<'_>,
) -> Result<Summary, BackfillError> {
    let mut summary = Summary::default();
    let mut opts = opts.clone();
    // The same period for a dry run as for a real one: what is printed is
    // what would be enqueued.
    let window = match &dest {
        Destination::Outbox(outbox) => outbox.options().dedupe_window.as_secs_f64(),
        Destination::Print { .. } => opts.dedupe_window,
    };
    let (since, defaulted) = enqueue_since(opts.since, opts.now, window)?;
    opts.since = Some(since);
    summary.since_defaulted = defaulted;
    summary.since = opts.since;
    summary.dry_run = matches!(dest, Destination::Print { .. });
    let errors_before = render_errors(rules);
    let mut warned_unkeyed: BTreeSet<String> = BTreeSet::new();
    let mut batch: Vec<DeliveryRequest> = Vec::new();
    let mut receipts: VecDeque<EnqueueReceipt> = VecDeque::new();
    let now = opts.now;
    let (mut out, outbox) = match dest {
        Destination::Print { out, format } => (Some((out, format)), None),
        Destination::Outbox(o) => (None, Some(o)),
    };
    let wait = |r: EnqueueReceipt, s: &mut Summary| -> Result<(), BackfillError> {
        s.add(futures::executor::block_on(r)?);
        Ok(())
    };
    for_each_call(
        input,
        classifier,
        &opts,
        &mut summary,
        |record, in_range, summary| {
            if !in_range {
                return Ok(());
            }
            let reqs = rules.evaluate(&ModelEvent::Call(record));
            summary.requests += reqs.len() as u64;
            if let Some((w, format)) = out.as_mut() {
                for r in &reqs {
                    crate::replay::write_request(w, r, *format).map_err(BackfillError::Write)?;
                }
                return Ok(());
            }
            let Some(outbox) = outbox else { return Ok(()) };
            for mut r in reqs {
                if r.idempotency_key.is_none() {
                    summary.unkeyed += 1;
                    if warned_unkeyed.insert(r.rule.clone()) {
                        tracing::warn!(
                            rule = %r.rule,
                            "rule has no idempotency_key: a backfill could not recognise its requests later, so they are not sent"
                        );
                    }
                    continue;
                }
                if r.expires_at.is_some_and(|e| e <= now) {
                    summary.stale += 1;
                    continue;
                }
                // Sent now: retries count from now (expires_at stays absolute).
                r.created_at = now;
                batch.push(r);
            }
            if batch.len() >= BATCH {
                receipts.push_back(outbox.submit(std::mem::take(&mut batch)));
                while receipts.len() > IN_FLIGHT {
                    if let Some(r) = receipts.pop_front() {
                        wait(r, summary)?;
                    }
                }
            }
            Ok(())
        },
    )?;
    if let Some(outbox) = outbox {
        if !batch.is_empty() {
            receipts.push_back(outbox.submit(std::mem::take(&mut batch)));
        }
        while let Some(r) = receipts.pop_front() {
            wait(r, &mut summary)?;
        }
    }
    if let Some((w, _)) = out.as_mut() {
        w.flush().map_err(BackfillError::Write)?;
    }
    summary.failed += render_errors(rules).saturating_sub(errors_before);
    Ok(summary)
}
