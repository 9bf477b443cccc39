//! Grouping the rows of one call, in bounded memory.
//!
//! A call leaves several rows (one per dial attempt, one per party A
//! channel, the `h` extension's row), all carrying the call's linkedid
//! (`newcdrcolumns=yes`); without it, party A's uniqueid (`loguniqueid=yes`)
//! groups the rows of one party A channel; without either, the party A
//! channel name does. Asterisk writes a party A's rows when that channel
//! hangs up, so the rows of one call are adjacent or close in the file: the
//! rows written last (a transfer's, a caller still talking after the
//! consultation leg hung up) come at most one call duration after the first.
//!
//! **Bound.** [`Grouper`] keeps a call open until the newest `end` read so
//! far is more than `window` (default: `calls.max_age`, 4 h) past the `end`
//! of the call's latest row, then hands it out. At most `max_open` calls
//! (default 20 000) are open at once; beyond that the call with the oldest
//! latest row is handed out early (counted in [`GroupStats::forced`]).
//! Memory is therefore bounded by `max_open` calls whatever the file size;
//! with the defaults a PBX can end 5 000 calls an hour before any call is
//! handed out early. A row arriving for a call already handed out (a call
//! longer than the window, or forced out) is not merged into a second
//! record: it is returned as late and counted ([`GroupStats::late`]); the
//! ids of handed-out calls are remembered for one more window (at most
//! `2 × max_open` of them).
//!
//! **Several files.** Rotated files may be concatenated in any order
//! (`zcat -f Master.csv*` lists the newest first): a row of a call not seen
//! yet whose `end` is more than the window before the newest `end` can only
//! come from another (older) file, so every open call is handed out there
//! and the clock restarts ([`GroupStats::segments`]). (Within one file such
//! a row would be a call longer than the window: it is then handed out
//! early too, the documented limit.)

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::cdr::CdrRow;

/// Default for [`Grouper::new`]'s `max_open`.
pub const DEFAULT_MAX_OPEN: usize = 20_000;

/// What groups a row with others.
pub fn group_key(row: &CdrRow) -> String {
    if let Some(l) = row.linkedid.as_deref().filter(|s| !s.trim().is_empty()) {
        return format!("l:{}", l.trim());
    }
    if let Some(u) = row.uniqueid.as_deref().filter(|s| !s.trim().is_empty()) {
        return format!("u:{}", u.trim());
    }
    format!("c:{}", row.channel.trim())
}

/// Counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    /// Calls handed out before their window passed (`max_open` reached).
    pub forced: u64,
    /// Rows that arrived after their call was handed out.
    pub late: u64,
    /// Most calls open at once.
    pub peak_open: usize,
    /// Jumps back in time that started a new segment (concatenated files).
    pub segments: u64,
}

struct Open {
    rows: Vec<CdrRow>,
    /// (latest end in ms, insertion id): its place in `order`.
    slot: (i64, u64),
}

/// Groups rows into calls with a bounded window (see the module docs).
pub struct Grouper {
    window_ms: i64,
    max_open: usize,
    open: HashMap<String, Open>,
    order: BTreeMap<(i64, u64), String>,
    clock_ms: i64,
    next_id: u64,
    done: HashMap<String, i64>,
    done_order: VecDeque<(i64, String)>,
    stats: GroupStats,
}

fn ms(t: f64) -> i64 {
    (t * 1000.0).round() as i64
}

impl Grouper {
    /// A grouper that waits `window_secs` of CDR time and holds at most
    /// `max_open` calls.
    pub fn new(window_secs: f64, max_open: usize) -> Self {
        Self {
            window_ms: ms(window_secs.max(0.0)),
            max_open: max_open.max(1),
            open: HashMap::new(),
            order: BTreeMap::new(),
            clock_ms: i64::MIN,
            next_id: 0,
            done: HashMap::new(),
            done_order: VecDeque::new(),
            stats: GroupStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> GroupStats {
        self.stats
    }

    /// Calls open now.
    pub fn open_calls(&self) -> usize {
        self.open.len()
    }

    /// Adds a row; calls that are complete are appended to `out`. Returns
    /// the row back when its call was already handed out (late).
    pub fn push(&mut self, row: CdrRow, out: &mut Vec<Vec<CdrRow>>) -> Option<CdrRow> {
        let key = group_key(&row);
        let end = ms(row.end.0);
        let known = self.open.contains_key(&key);
        if !known && self.done.contains_key(&key) {
            self.stats.late += 1;
            return Some(row);
        }
        if !known && self.clock_ms != i64::MIN && end < self.clock_ms.saturating_sub(self.window_ms)
        {
            // A new call far older than what came before: another file
            // (older) follows. The open calls are complete.
            self.stats.segments += 1;
            self.finish(out);
            self.clock_ms = end;
        }
        self.clock_ms = self.clock_ms.max(end);
        match self.open.get_mut(&key) {
            Some(g) => {
                g.rows.push(row);
                if end > g.slot.0 {
                    self.order.remove(&g.slot);
                    g.slot.0 = end;
                    self.order.insert(g.slot, key);
                }
            }
            None => {
                let slot = (end, self.next_id);
                self.next_id += 1;
                self.order.insert(slot, key.clone());
                self.open.insert(
                    key,
                    Open {
                        rows: vec![row],
                        slot,
                    },
                );
            }
        }
        self.stats.peak_open = self.stats.peak_open.max(self.open.len());
        let horizon = self.clock_ms.saturating_sub(self.window_ms);
        while let Some((&slot, _)) = self.order.first_key_value() {
            if slot.0 >= horizon && self.open.len() <= self.max_open {
                break;
            }
            if slot.0 >= horizon {
                self.stats.forced += 1;
            }
            self.flush(slot, out);
        }
        // Remember handed-out calls for one more window.
        self.forget(horizon.saturating_sub(self.window_ms));
        None
    }

    /// Hands out every open call (end of input), oldest first.
    pub fn finish(&mut self, out: &mut Vec<Vec<CdrRow>>) {
        while let Some((&slot, _)) = self.order.first_key_value() {
            self.flush(slot, out);
        }
    }

    fn flush(&mut self, slot: (i64, u64), out: &mut Vec<Vec<CdrRow>>) {
        let Some(key) = self.order.remove(&slot) else {
            return;
        };
        if let Some(g) = self.open.remove(&key) {
            out.push(g.rows);
        }
        self.done.insert(key.clone(), slot.0);
        self.done_order.push_back((slot.0, key));
    }

    /// Forgets handed-out calls older than the window (and beyond the cap).
    fn forget(&mut self, horizon: i64) {
        while let Some((t, _)) = self.done_order.front() {
            if *t >= horizon && self.done_order.len() <= 2 * self.max_open {
                break;
            }
            if let Some((t, k)) = self.done_order.pop_front() {
                if self.done.get(&k) == Some(&t) {
                    self.done.remove(&k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::times::LocalTime;
    use super::*;

    fn row(linkedid: &str, end: f64, line: u64) -> CdrRow {
        CdrRow {
            line,
            accountcode: String::new(),
            src: String::new(),
            dst: String::new(),
            dcontext: String::new(),
            clid: String::new(),
            channel: "SIP/1001-1".into(),
            dstchannel: String::new(),
            lastapp: String::new(),
            lastdata: String::new(),
            start: LocalTime(end - 5.0),
            answer: None,
            end: LocalTime(end),
            duration: 5,
            billsec: 0,
            disposition: "NO ANSWER".into(),
            uniqueid: Some(linkedid.into()),
            userfield: None,
            linkedid: Some(linkedid.into()),
            sequence: None,
        }
    }

    fn lines(groups: &[Vec<CdrRow>]) -> Vec<Vec<u64>> {
        groups
            .iter()
            .map(|g| g.iter().map(|r| r.line).collect())
            .collect()
    }

    #[test]
    fn interleaved_rows_group_and_old_calls_flush() {
        let mut g = Grouper::new(60.0, 100);
        let mut out = Vec::new();
        g.push(row("a", 100.0, 1), &mut out);
        g.push(row("b", 101.0, 2), &mut out);
        g.push(row("a", 102.0, 3), &mut out);
        assert!(out.is_empty());
        // 61 s after b's last row: a (102) is still inside, b is not.
        g.push(row("c", 162.0, 4), &mut out);
        assert_eq!(lines(&out), [vec![2]]);
        // A row for b now is late, not a second call.
        assert!(g.push(row("b", 163.0, 5), &mut out).is_some());
        assert_eq!(g.stats().late, 1);
        g.push(row("c", 200.0, 6), &mut out);
        g.finish(&mut out);
        assert_eq!(lines(&out), [vec![2], vec![1, 3], vec![4, 6]]);
    }

    #[test]
    fn older_files_after_newer_ones_start_a_new_segment() {
        let mut g = Grouper::new(60.0, 100);
        let mut out = Vec::new();
        // The newest file, then an older one (a day earlier).
        g.push(row("new-1", 86400.0, 1), &mut out);
        g.push(row("new-1", 86401.0, 2), &mut out);
        g.push(row("new-2", 86402.0, 3), &mut out);
        g.push(row("old-1", 100.0, 4), &mut out);
        assert_eq!(lines(&out), [vec![1, 2], vec![3]]);
        g.push(row("old-1", 101.0, 5), &mut out);
        g.push(row("old-2", 102.0, 6), &mut out);
        g.finish(&mut out);
        assert_eq!(lines(&out), [vec![1, 2], vec![3], vec![4, 5], vec![6]]);
        assert_eq!(g.stats().segments, 1);
        assert_eq!(g.stats().late, 0);
    }

    #[test]
    fn memory_is_bounded_by_max_open() {
        let mut g = Grouper::new(1e9, 10);
        let mut out = Vec::new();
        for i in 0..1000u64 {
            g.push(row(&format!("call-{i}"), i as f64, i), &mut out);
            assert!(g.open_calls() <= 10);
        }
        assert_eq!(g.stats().forced, 990);
        assert!(g.done.len() <= 20 && g.done_order.len() <= 20);
        g.finish(&mut out);
        assert_eq!(out.len(), 1000);
    }

    #[test]
    fn keys() {
        let mut r = row("1.1", 1.0, 1);
        assert_eq!(group_key(&r), "l:1.1");
        r.linkedid = None;
        r.uniqueid = Some("1.2".into());
        assert_eq!(group_key(&r), "u:1.2");
        r.uniqueid = None;
        assert_eq!(group_key(&r), "c:SIP/1001-1");
    }
}
