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
mod pipeline;
mod progress;
pub mod record;
pub mod sql;
mod summary;
pub mod times;

use std::io::Write;

use crate::deliver::{Outbox, OutboxError};
use crate::replay::Format;

pub use self::cdr::{CdrReader, CdrRow, RowError};
pub use self::group::{Grouper, DEFAULT_MAX_OPEN};
pub use self::pipeline::{for_each_call, for_each_call_from, run, run_from, RowSource};
pub use self::record::{build, Built, NotACall};
pub use self::summary::Summary;
pub use self::times::{parse_bound, CdrTimezone};

/// How far inside the outbox's dedupe window `since` must stay.
pub const DEDUPE_MARGIN: f64 = 15.0 * 60.0;

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
    /// The CDR database failed (connecting, its columns, a query); the
    /// message never holds the password.
    #[error("the CDR database {db}: {message}")]
    Database {
        /// The table, as shown (`mysql://cdr:***@db/asteriskcdrdb table cdr`).
        db: String,
        /// What went wrong.
        message: String,
    },
    /// The saved cursor of a CDR table could not be read or written.
    #[error("the CDR cursor {0}")]
    Cursor(String),
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
