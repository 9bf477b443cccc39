//! The one path every backfill source takes: rows ([`RowSource`]: a CDR
//! file, a CDR table) → calls ([`Grouper`]) → records ([`build`]) → the
//! rules → printed or enqueued ([`Sender`]).

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, Write};

use crate::deliver::outbox::EnqueueReceipt;
use crate::deliver::{DeliveryRequest, Outbox};
use crate::model::{CallRecord, ModelEvent};
use crate::normalize::Classifier;
use crate::replay::Format;
use crate::rules::RuleSet;

use super::progress::Progress;
use super::record::{build, Built, NotACall};
use super::{
    enqueue_since, times, BackfillError, CdrReader, CdrRow, Destination, Grouper, Options,
    RowError, Summary,
};

/// Requests enqueued per outbox batch.
const BATCH: usize = 256;
/// Batches awaiting their commit at most.
const IN_FLIGHT: usize = 8;
/// Malformed rows kept for the summary (all are logged).
const KEEP_ERRORS: usize = 20;

/// Where CDR rows come from, one at a time (memory stays bounded by the
/// grouping, whatever the size of the source).
pub trait RowSource {
    /// The next row: `Ok(Some(Ok(row)))`, a row with bad data
    /// `Ok(Some(Err(e)))` (reported and skipped), the end `Ok(None)`; `Err`
    /// when the source itself fails (I/O, the database).
    fn next_row(&mut self) -> Result<Option<Result<CdrRow, RowError>>, BackfillError>;

    /// How far it got, for the progress bar.
    fn position(&self) -> u64;

    /// Whether [`position`](Self::position) counts bytes (else rows).
    fn counts_bytes(&self) -> bool {
        true
    }
}

impl<R: BufRead> RowSource for CdrReader<R> {
    fn next_row(&mut self) -> Result<Option<Result<CdrRow, RowError>>, BackfillError> {
        CdrReader::next_row(self).map_err(|source| BackfillError::Read {
            line: self.lines(),
            source,
        })
    }

    fn position(&self) -> u64 {
        CdrReader::position(self)
    }
}

/// Reads every row of `source` and hands each call's rows to `on_group`,
/// with `true` for those handed out at the end of the input (the grouping
/// window did not close them: a database source may hold them back).
/// Malformed rows are counted, logged and kept in the summary. `skip`
/// drops rows before grouping (a database source's rows of calls an
/// earlier run handed out; counted by the caller).
pub(super) fn drive(
    source: &mut dyn RowSource,
    opts: &Options,
    summary: &mut Summary,
    mut skip: impl FnMut(&CdrRow) -> bool,
    mut on_group: impl FnMut(Vec<CdrRow>, bool, &mut Summary) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    let mut grouper = Grouper::new(opts.window, opts.max_open);
    let mut progress = Progress::new(opts, source.counts_bytes());
    let mut groups: Vec<Vec<CdrRow>> = Vec::new();
    while let Some(row) = source.next_row()? {
        summary.rows += 1;
        match row {
            Ok(row) if skip(&row) => {}
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
        for rows in groups.drain(..) {
            on_group(rows, false, summary)?;
        }
        progress.update(source.position(), summary, false);
    }
    grouper.finish(&mut groups);
    for rows in groups.drain(..) {
        on_group(rows, true, summary)?;
    }
    let gs = grouper.stats();
    summary.late_rows = gs.late;
    summary.forced_groups = gs.forced;
    summary.peak_open_calls = gs.peak_open;
    progress.update(source.position(), summary, true);
    progress.finish();
    Ok(())
}

/// Builds one call's record (rows in any order).
pub(super) fn build_call(
    rows: Vec<CdrRow>,
    classifier: &Classifier,
    opts: &Options,
) -> (Result<Built, NotACall>, u64) {
    let n = rows.len() as u64;
    (build(rows, classifier, &opts.pbx, &opts.timezone), n)
}

/// Counts a built call and says whether it ended in `[since, until)`.
pub(super) fn count_call(
    built: Result<Built, NotACall>,
    rows: u64,
    opts: &Options,
    summary: &mut Summary,
) -> Option<(CallRecord, bool)> {
    let b = match built {
        Ok(b) => b,
        Err(_) => {
            summary.not_calls += 1;
            return None;
        }
    };
    summary.calls += 1;
    if let Some(o) = b.offset_mismatch {
        summary.timezone_mismatch += 1;
        summary.implied_offsets.insert(times::offset_text(o));
    }
    let end = b.record.ended_at.0;
    let in_range = opts.since.is_none_or(|s| end >= s) && opts.until.is_none_or(|u| end < u);
    if !in_range {
        summary.out_of_range += 1;
        summary.rows_out_of_range += rows;
    }
    Some((b.record, in_range))
}

/// Reads CDR rows from `input` and calls `on_call` for every call record
/// (in or out of the period: `in_range` tells). The core of [`run`]; also
/// useful alone (tests, other outputs).
pub fn for_each_call<R: BufRead>(
    input: R,
    classifier: &Classifier,
    opts: &Options,
    summary: &mut Summary,
    on_call: impl FnMut(CallRecord, bool, &mut Summary) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    for_each_call_from(
        &mut CdrReader::new(input),
        classifier,
        opts,
        summary,
        on_call,
    )
}

/// [`for_each_call`] over any [`RowSource`].
pub fn for_each_call_from(
    source: &mut dyn RowSource,
    classifier: &Classifier,
    opts: &Options,
    summary: &mut Summary,
    mut on_call: impl FnMut(CallRecord, bool, &mut Summary) -> Result<(), BackfillError>,
) -> Result<(), BackfillError> {
    drive(
        source,
        opts,
        summary,
        |_| false,
        |rows, _, summary| {
            let (built, n) = build_call(rows, classifier, opts);
            match count_call(built, n, opts, summary) {
                Some((record, in_range)) => on_call(record, in_range, summary),
                None => Ok(()),
            }
        },
    )
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

/// The period a run takes calls from: `since` checked against (or
/// defaulted to) what the outbox remembers, the same for a dry run as for
/// a real one (what is printed is what would be enqueued).
pub(super) fn period(
    opts: &Options,
    dest: &Destination<'_>,
    summary: &mut Summary,
) -> Result<Options, BackfillError> {
    let mut opts = opts.clone();
    let window = match dest {
        Destination::Outbox(outbox) => outbox.options().dedupe_window.as_secs_f64(),
        Destination::Print { .. } => opts.dedupe_window,
    };
    let (since, defaulted) = enqueue_since(opts.since, opts.now, window)?;
    opts.since = Some(since);
    summary.since_defaulted = defaulted;
    summary.since = opts.since;
    summary.dry_run = matches!(dest, Destination::Print { .. });
    Ok(opts)
}

/// Evaluates the rules on call records and prints or enqueues their
/// requests (see the module docs of [`super`] for what is not enqueued).
pub(super) struct Sender<'r, 'd> {
    rules: &'r RuleSet,
    out: Option<(&'d mut dyn Write, Format)>,
    outbox: Option<&'d Outbox>,
    batch: Vec<DeliveryRequest>,
    receipts: VecDeque<EnqueueReceipt>,
    warned_unkeyed: BTreeSet<String>,
    errors_before: u64,
    now: f64,
}

impl<'r, 'd> Sender<'r, 'd> {
    pub(super) fn new(rules: &'r RuleSet, dest: Destination<'d>, now: f64) -> Self {
        let (out, outbox) = match dest {
            Destination::Print { out, format } => (Some((out, format)), None),
            Destination::Outbox(o) => (None, Some(o)),
        };
        Self {
            rules,
            out,
            outbox,
            batch: Vec::new(),
            receipts: VecDeque::new(),
            warned_unkeyed: BTreeSet::new(),
            errors_before: render_errors(rules),
            now,
        }
    }

    fn wait(r: EnqueueReceipt, s: &mut Summary) -> Result<(), BackfillError> {
        s.add(futures::executor::block_on(r)?);
        Ok(())
    }

    /// One call in the period.
    pub(super) fn call(
        &mut self,
        record: CallRecord,
        summary: &mut Summary,
    ) -> Result<(), BackfillError> {
        let reqs = self.rules.evaluate(&ModelEvent::Call(record));
        summary.requests += reqs.len() as u64;
        if let Some((w, format)) = self.out.as_mut() {
            for r in &reqs {
                crate::replay::write_request(w, r, *format).map_err(BackfillError::Write)?;
            }
            return Ok(());
        }
        let Some(outbox) = self.outbox else {
            return Ok(());
        };
        for mut r in reqs {
            if r.idempotency_key.is_none() {
                summary.unkeyed += 1;
                if self.warned_unkeyed.insert(r.rule.clone()) {
                    tracing::warn!(
                        rule = %r.rule,
                        "rule has no idempotency_key: a backfill could not recognise its requests later, so they are not sent"
                    );
                }
                continue;
            }
            if r.expires_at.is_some_and(|e| e <= self.now) {
                summary.stale += 1;
                continue;
            }
            // Sent now: retries count from now (expires_at stays absolute).
            r.created_at = self.now;
            self.batch.push(r);
        }
        if self.batch.len() >= BATCH {
            self.receipts
                .push_back(outbox.submit(std::mem::take(&mut self.batch)));
            while self.receipts.len() > IN_FLIGHT {
                if let Some(r) = self.receipts.pop_front() {
                    Self::wait(r, summary)?;
                }
            }
        }
        Ok(())
    }

    /// Enqueues what is left and waits until every batch is committed (or
    /// flushes the printed output).
    pub(super) fn finish(mut self, summary: &mut Summary) -> Result<(), BackfillError> {
        if let Some(outbox) = self.outbox {
            if !self.batch.is_empty() {
                self.receipts
                    .push_back(outbox.submit(std::mem::take(&mut self.batch)));
            }
            while let Some(r) = self.receipts.pop_front() {
                Self::wait(r, summary)?;
            }
        }
        if let Some((w, _)) = self.out.as_mut() {
            w.flush().map_err(BackfillError::Write)?;
        }
        summary.failed += render_errors(self.rules).saturating_sub(self.errors_before);
        Ok(())
    }
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
    run_from(&mut CdrReader::new(input), classifier, rules, opts, dest)
}

/// [`run`] over any [`RowSource`] (every call it yields is complete).
pub fn run_from(
    source: &mut dyn RowSource,
    classifier: &Classifier,
    rules: &RuleSet,
    opts: &Options,
    dest: Destination<'_>,
) -> Result<Summary, BackfillError> {
    let mut summary = Summary::default();
    let opts = period(opts, &dest, &mut summary)?;
    let mut sender = Sender::new(rules, dest, opts.now);
    for_each_call_from(
        source,
        classifier,
        &opts,
        &mut summary,
        |record, in_range, summary| {
            if in_range {
                sender.call(record, summary)
            } else {
                Ok(())
            }
        },
    )?;
    sender.finish(&mut summary)?;
    Ok(summary)
}
