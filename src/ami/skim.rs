//! Skimming an ignored event ([`super::codec`]'s short path): where the
//! run of its lines that the codec would only count ends, found with one
//! vectorised multi-pattern search instead of one line search per line.
//!
//! Inside an event on the codec's ignore list a line only matters when it
//! is empty (the packet ends), when it may be an `ActionID` header (its
//! first byte is `A`, `a` or ASCII whitespace: see `may_be_action_id` in
//! the codec), or when it crosses the packet size limit. Every other line
//! is counted and dropped. Such lines are recognised by the two bytes
//! where they start: a line end and the line's first byte. [`plain_run`]
//! searches for the first line end followed by a byte that may matter
//! (Teddy, `aho_corasick::packed`, 32 bytes at a time) — about two
//! searches per noise event (its `AccountCode` line, its end) instead of
//! one per line (about 19).

use std::sync::LazyLock;

use aho_corasick::packed::{Config, MatchKind, Searcher};

/// A line end followed by the first byte of a line that is not plain: an
/// empty line (`\n`, or `\r` of CRLF: a line starting with CR is empty or
/// starts with whitespace) or a possible `ActionID` (`A`, `a`, ASCII
/// whitespace).
const NOT_PLAIN: [&[u8]; 7] = [b"\nA", b"\na", b"\n ", b"\n\t", b"\n\n", b"\n\r", b"\n\x0c"];

/// The searcher, when this CPU has one (else the codec takes every line
/// on its own).
static SEARCHER: LazyLock<Option<Searcher>> = LazyLock::new(|| {
    Config::new()
        .match_kind(MatchKind::LeftmostFirst)
        .builder()
        .extend(NOT_PLAIN)
        .build()
});

/// The run of plain lines at the start of `rest`, in bytes (line ends
/// included): `rest` starts with the line end of the line before (so the
/// first line is judged too) and the run ends at the first line that is
/// not plain ([`Run::ended`]), or at the last complete line of `rest`.
/// `None`: no run (the first line is not plain or incomplete, or this CPU
/// has no searcher).
pub(super) fn plain_run(rest: &[u8]) -> Option<Run> {
    let searcher = SEARCHER.as_ref()?;
    let run = match searcher.find(rest) {
        // The line end at the match ends the run (its line is plain).
        Some(m) => Run {
            len: m.start(),
            ended: true,
        },
        // All plain: up to the last line end.
        None => Run {
            len: memchr::memrchr(b'\n', rest)?,
            ended: false,
        },
    };
    (run.len > 0).then_some(run)
}

/// A run of plain lines (see [`plain_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Run {
    /// Its bytes, line ends included.
    pub(super) len: usize,
    /// A line that is not plain follows; else the run ends with the last
    /// complete line (what follows was searched and has no line end).
    pub(super) ended: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(len: usize) -> Option<Run> {
        Some(Run { len, ended: true })
    }

    fn open(len: usize) -> Option<Run> {
        Some(Run { len, ended: false })
    }

    #[test]
    fn a_run_ends_before_a_line_that_may_matter() {
        // The line before ends at index 0; its successors are judged.
        assert_eq!(
            plain_run(b"\nChannel: x\r\nUniqueid: 1\r\nAccountCode: \r\n"),
            ended(25)
        );
        assert_eq!(plain_run(b"\nChannel: x\r\n\r\n"), ended(12));
        assert_eq!(plain_run(b"\nChannel: x\n\nEvent: B"), ended(11));
        assert_eq!(plain_run(b"\nX: 1\n actionid: 2\n"), ended(5));
        assert_eq!(plain_run(b"\nX: 1\n\tY\n"), ended(5));
        assert_eq!(plain_run(b"\nX: 1\n\x0cY\n"), ended(5));
        assert_eq!(plain_run(b"\nX: 1\naction: 2\n"), ended(5));
        // The first line itself may matter: no run.
        assert_eq!(plain_run(b"\nActionID: 7\r\n"), None);
        assert_eq!(plain_run(b"\n\r\n"), None);
    }

    #[test]
    fn without_a_line_that_may_matter_the_run_is_every_complete_line() {
        assert_eq!(plain_run(b"\nX: 1\r\nY: 2\r\nZ: incompl"), open(12));
        assert_eq!(plain_run(b"\nX: 1\r\nY: 2\r\n"), open(12));
        // Only an incomplete line: nothing to take.
        assert_eq!(plain_run(b"\nX: incompl"), None);
        assert_eq!(plain_run(b"\n"), None);
        assert_eq!(plain_run(b""), None);
        // A long run, beyond the searcher's vector width.
        let mut long = b"\n".to_vec();
        for i in 0..200 {
            long.extend_from_slice(format!("Variable{i}: {i}\r\n").as_bytes());
        }
        let plain = long.len() - 1;
        long.extend_from_slice(b"AccountCode: \r\n");
        assert_eq!(plain_run(&long), ended(plain));
    }
}
