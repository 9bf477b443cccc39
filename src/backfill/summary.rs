//! What a backfill run did: counters, and the summary it prints.

use std::collections::BTreeSet;

use crate::deliver::outbox::EnqueueOutcome;

use super::RowError;

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
    /// Groups of rows that are not a call of their own ([`NotACall`](super::NotACall)).
    pub not_calls: u64,
    /// Rows that arrived after their call was handed out ([`group`](super::group)).
    pub late_rows: u64,
    /// Database sources: rows of calls an earlier run already handed out
    /// (read again because they are newer than the saved cursor).
    pub rows_seen_before: u64,
    /// Database sources: calls whose rows were read but that may still be
    /// in progress; not handed out, read again by the next run.
    pub in_progress: u64,
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

    pub(super) fn add(&mut self, o: EnqueueOutcome) {
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
        write!(
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
        if self.rows_seen_before > 0 {
            write!(
                f,
                "; {} rows of calls an earlier run handed out",
                self.rows_seen_before
            )?;
        }
        if self.in_progress > 0 {
            write!(
                f,
                "; {} calls still in progress (read again next run)",
                self.in_progress
            )?;
        }
        writeln!(f)?;
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
