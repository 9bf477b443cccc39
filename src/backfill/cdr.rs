//! Reading `cdr_csv`'s `Master.csv`, one row at a time.
//!
//! # Columns
//!
//! `cdr_csv` writes no header line. Its columns are, in order:
//!
//! | # | column | notes |
//! |---|---|---|
//! | 0–8 | accountcode, src, dst, dcontext, clid, channel, dstchannel, lastapp, lastdata | always |
//! | 9–11 | start, answer, end | local time `YYYY-MM-DD HH:MM:SS` (`answer` empty when unanswered) |
//! | 12–15 | duration, billsec, disposition, amaflags | always |
//! | next | uniqueid | with `loguniqueid=yes` |
//! | next | userfield | with `loguserfield=yes` |
//! | last three | peeraccount, linkedid, sequence | with `newcdrcolumns=yes` |
//!
//! so a row has 16 (classic), 17, 18, 19, 20 or 21 fields. With 17 or 20,
//! the one optional field is a uniqueid when it looks like one
//! (`[NAME-]EPOCH.SEQ`), else a userfield. A file whose first line names
//! its columns (an export of the `cdr` database table, e.g. `calldate`,
//! `src`, …, `uniqueid`, `linkedid`) is read by those names instead; such a
//! file may have `calldate` (or `start`) without `answer`/`end`, which are
//! then derived from `duration` and `billsec`.
//!
//! # Malformed input
//!
//! Lines are read one by one (at most [`MAX_LINE`] bytes; a longer line is
//! skipped without being held in memory), decoded lossily (caller names in
//! Latin-1 stay readable) and split as CSV (`"…"` quoting, `""` for a
//! quote). A line that does not split, has an unexpected number of
//! fields, or lacks a channel or a readable `start`/`end` is a
//! [`RowError`] with its line number; reading goes on with the next line.
//! Quoted fields spanning lines are not supported (`cdr_csv` never writes
//! them). Blank lines are ignored.

use std::io::BufRead;

use super::times::{id_epoch, parse_local, LocalTime};

/// Longest line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// One CDR row.
#[derive(Debug, Clone, PartialEq)]
pub struct CdrRow {
    /// 1-based line number in the file.
    pub line: u64,
    /// Account code.
    pub accountcode: String,
    /// Caller ID number (as it was at the end: the outbound route may have
    /// replaced the extension's number with the company's).
    pub src: String,
    /// Destination extension.
    pub dst: String,
    /// Destination context.
    pub dcontext: String,
    /// Caller ID, `"Name" <number>`.
    pub clid: String,
    /// Party A's channel.
    pub channel: String,
    /// Party B's channel (empty when none).
    pub dstchannel: String,
    /// Last application.
    pub lastapp: String,
    /// Its arguments.
    pub lastdata: String,
    /// Start (local time).
    pub start: LocalTime,
    /// Answer (local time), when answered.
    pub answer: Option<LocalTime>,
    /// End (local time).
    pub end: LocalTime,
    /// Seconds from start to end.
    pub duration: i64,
    /// Seconds from answer to end.
    pub billsec: i64,
    /// `ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`, `CONGESTION`.
    pub disposition: String,
    /// Party A's uniqueid (`loguniqueid=yes`).
    pub uniqueid: Option<String>,
    /// The user field (`loguserfield=yes`).
    pub userfield: Option<String>,
    /// The call's linkedid (`newcdrcolumns=yes`).
    pub linkedid: Option<String>,
    /// Creation order of the CDR (`newcdrcolumns=yes`).
    pub sequence: Option<i64>,
}

impl CdrRow {
    /// The `h` extension's row (the dialplan's hangup handler), which says
    /// nothing about who was called.
    pub fn is_h(&self) -> bool {
        self.dst == "h"
    }
}

/// Why a row was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// 1-based line number (of a database table: the row's place in the
    /// rows read).
    pub line: u64,
    /// What is wrong.
    pub message: String,
    /// The row's own key, when it has one (a database row: its uniqueid
    /// and start, which find it in the table).
    pub key: Option<String>,
}

impl RowError {
    /// An error about line `line`.
    pub fn at_line(line: u64, message: impl Into<String>) -> Self {
        Self {
            line,
            message: message.into(),
            key: None,
        }
    }
}

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.key {
            Some(k) => write!(f, "row {k}: {}", self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for RowError {}

/// Where each column is (`None`: the file has no such column).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Columns {
    accountcode: Option<usize>,
    src: Option<usize>,
    dst: Option<usize>,
    dcontext: Option<usize>,
    clid: Option<usize>,
    channel: Option<usize>,
    dstchannel: Option<usize>,
    lastapp: Option<usize>,
    lastdata: Option<usize>,
    start: Option<usize>,
    answer: Option<usize>,
    end: Option<usize>,
    duration: Option<usize>,
    billsec: Option<usize>,
    disposition: Option<usize>,
    uniqueid: Option<usize>,
    userfield: Option<usize>,
    linkedid: Option<usize>,
    sequence: Option<usize>,
    /// Fields per row.
    width: usize,
}

impl Columns {
    /// A header line's columns, if `fields` names the needed ones.
    pub(super) fn from_header(fields: &[String]) -> Option<Columns> {
        let find = |names: &[&str]| {
            fields
                .iter()
                .position(|f| names.iter().any(|n| f.trim().eq_ignore_ascii_case(n)))
        };
        let c = Columns {
            accountcode: find(&["accountcode"]),
            src: find(&["src"]),
            dst: find(&["dst"]),
            dcontext: find(&["dcontext"]),
            clid: find(&["clid"]),
            channel: find(&["channel"]),
            dstchannel: find(&["dstchannel"]),
            lastapp: find(&["lastapp"]),
            lastdata: find(&["lastdata"]),
            start: find(&["start", "calldate"]),
            answer: find(&["answer"]),
            end: find(&["end"]),
            duration: find(&["duration"]),
            billsec: find(&["billsec"]),
            disposition: find(&["disposition"]),
            uniqueid: find(&["uniqueid"]),
            userfield: find(&["userfield"]),
            linkedid: find(&["linkedid"]),
            sequence: find(&["sequence"]),
            width: fields.len(),
        };
        (c.src.is_some() && c.dst.is_some() && c.channel.is_some() && c.start.is_some())
            .then_some(c)
    }

    /// cdr_csv's columns for a row of `f.len()` fields (see the module docs).
    fn positional(f: &[String]) -> Option<Columns> {
        let width = f.len();
        if !(16..=21).contains(&width) {
            return None;
        }
        let mut c = Columns {
            accountcode: Some(0),
            src: Some(1),
            dst: Some(2),
            dcontext: Some(3),
            clid: Some(4),
            channel: Some(5),
            dstchannel: Some(6),
            lastapp: Some(7),
            lastdata: Some(8),
            start: Some(9),
            answer: Some(10),
            end: Some(11),
            duration: Some(12),
            billsec: Some(13),
            disposition: Some(14),
            width,
            ..Columns::default()
        };
        // Optional middle fields (uniqueid, userfield), then the three
        // newcdrcolumns (peeraccount, linkedid, sequence).
        let new_cols = width >= 19;
        let middle = width - 16 - if new_cols { 3 } else { 0 };
        match middle {
            1 if looks_like_uniqueid(&f[16]) => c.uniqueid = Some(16),
            1 => c.userfield = Some(16),
            2 => {
                c.uniqueid = Some(16);
                c.userfield = Some(17);
            }
            _ => {}
        }
        if new_cols {
            c.linkedid = Some(width - 2);
            c.sequence = Some(width - 1);
        }
        Some(c)
    }
}

/// `[NAME-]EPOCH.SEQ`.
fn looks_like_uniqueid(s: &str) -> bool {
    id_epoch(s).is_some()
}

/// Turns split fields into a row (columns from a header line, else by
/// position).
pub(super) fn to_row(
    line: u64,
    mut f: Vec<String>,
    named: Option<&Columns>,
) -> Result<CdrRow, RowError> {
    let err = |message: String| RowError::at_line(line, message);
    let positional;
    let c = match named {
        Some(n) => {
            if f.len() != n.width {
                return Err(err(format!(
                    "{} fields, the header names {}",
                    f.len(),
                    n.width
                )));
            }
            n
        }
        None => {
            positional = Columns::positional(&f).ok_or_else(|| {
                err(format!(
                    "{} field{}; a cdr_csv row has 16 to 21",
                    f.len(),
                    if f.len() == 1 { "" } else { "s" }
                ))
            })?;
            &positional
        }
    };
    let mut take = |i: Option<usize>| {
        i.and_then(|i| f.get_mut(i))
            .map(std::mem::take)
            .unwrap_or_default()
    };
    let opt = |s: String| (!s.trim().is_empty()).then(|| s.trim().to_string());
    let accountcode = take(c.accountcode);
    let src = take(c.src);
    let dst = take(c.dst);
    let dcontext = take(c.dcontext);
    let clid = take(c.clid);
    let channel = take(c.channel);
    let dstchannel = take(c.dstchannel);
    let lastapp = take(c.lastapp);
    let lastdata = take(c.lastdata);
    let start = take(c.start);
    let answer = take(c.answer);
    let end = take(c.end);
    let duration = take(c.duration);
    let billsec = take(c.billsec);
    let disposition = take(c.disposition).trim().to_ascii_uppercase();
    let uniqueid = opt(take(c.uniqueid));
    let userfield = c.userfield.map(|i| take(Some(i)));
    let linkedid = opt(take(c.linkedid));
    let sequence = take(c.sequence);
    if channel.trim().is_empty() {
        return Err(err("no channel".into()));
    }
    let int = |s: &str, what: &str| -> Result<Option<i64>, RowError> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        s.parse::<i64>()
            .map(Some)
            .map_err(|_| err(format!("{what} {s:?} is not a whole number")))
    };
    let duration = int(&duration, "duration")?.unwrap_or(0);
    let billsec = int(&billsec, "billsec")?.unwrap_or(0);
    let sequence = int(&sequence, "sequence")?;
    let time = |s: &str, what: &str| -> Result<Option<LocalTime>, RowError> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        parse_local(s)
            .map(Some)
            .ok_or_else(|| err(format!("{what} {s:?} is not a time (YYYY-MM-DD HH:MM:SS)")))
    };
    let start = time(&start, "start")?.ok_or_else(|| err("no start time".into()))?;
    let answer_given = c.answer.is_some();
    let answer = time(&answer, "answer")?;
    let end = time(&end, "end")?;
    // Database exports have only the start (calldate): derive the rest.
    let end = end.unwrap_or(LocalTime(start.0 + duration.max(0) as f64));
    let answer = match answer {
        None if !answer_given && disposition == "ANSWERED" => {
            Some(LocalTime(end.0 - billsec.max(0) as f64))
        }
        a => a,
    };
    if end.0 < start.0 {
        return Err(err("end is before start".into()));
    }
    Ok(CdrRow {
        line,
        accountcode,
        src,
        dst,
        dcontext,
        clid,
        channel,
        dstchannel,
        lastapp,
        lastdata,
        start,
        answer,
        end,
        duration,
        billsec,
        disposition,
        uniqueid,
        userfield,
        linkedid,
        sequence,
    })
}

/// Splits one CSV line (no line end). `None` when the quoting is broken.
pub fn split_csv(line: &str) -> Option<Vec<String>> {
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(24);
    let mut i = 0;
    loop {
        if b.get(i) == Some(&b'"') {
            // Quoted: up to the closing quote, `""` standing for `"`.
            let mut field = String::new();
            let mut j = i + 1;
            loop {
                let k = j + b[j..].iter().position(|c| *c == b'"')?;
                field.push_str(&line[j..k]);
                if b.get(k + 1) == Some(&b'"') {
                    field.push('"');
                    j = k + 2;
                } else {
                    i = k + 1;
                    break;
                }
            }
            out.push(field);
            match b.get(i) {
                None => return Some(out),
                Some(b',') => i += 1,
                Some(_) => return None,
            }
        } else {
            let end = b[i..]
                .iter()
                .position(|c| *c == b',' || *c == b'"')
                .map_or(b.len(), |p| i + p);
            if b.get(end) == Some(&b'"') {
                return None;
            }
            out.push(line[i..end].to_string());
            if end == b.len() {
                return Some(out);
            }
            i = end + 1;
        }
    }
}

/// Streams rows from a `Master.csv` (or any reader), with line numbers and
/// the byte position (for progress).
pub struct CdrReader<R> {
    input: R,
    line: u64,
    bytes: u64,
    buf: Vec<u8>,
    named: Option<Columns>,
    started: bool,
}

impl<R: BufRead> CdrReader<R> {
    /// Reads from `input`.
    pub fn new(input: R) -> Self {
        Self {
            input,
            line: 0,
            bytes: 0,
            buf: Vec::with_capacity(1024),
            named: None,
            started: false,
        }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.bytes
    }

    /// Lines read so far.
    pub fn lines(&self) -> u64 {
        self.line
    }

    /// Reads one line into `buf` (at most [`MAX_LINE`] bytes kept); returns
    /// false at the end of the input, and whether the line was cut.
    fn read_line(&mut self) -> std::io::Result<Option<bool>> {
        self.buf.clear();
        let mut too_long = false;
        let mut any = false;
        loop {
            let chunk = match self.input.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if chunk.is_empty() {
                return Ok(any.then_some(too_long));
            }
            any = true;
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if !too_long {
                let room = MAX_LINE.saturating_sub(self.buf.len());
                if take > room {
                    too_long = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(&chunk[..take]);
                }
            }
            self.input.consume(take);
            self.bytes += take as u64;
            if done {
                return Ok(Some(too_long));
            }
        }
    }

    /// The next row: `Ok(Some(Ok(row)))`, a malformed row
    /// `Ok(Some(Err(e)))`, the end `Ok(None)`; `Err` only for I/O errors.
    pub fn next_row(&mut self) -> std::io::Result<Option<Result<CdrRow, RowError>>> {
        loop {
            let Some(too_long) = self.read_line()? else {
                return Ok(None);
            };
            self.line += 1;
            let line = self.line;
            if too_long {
                return Ok(Some(Err(RowError::at_line(
                    line,
                    format!("longer than {MAX_LINE} bytes"),
                ))));
            }
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim_end_matches(['\n', '\r']);
            // A byte-order mark before the first line.
            let text = if line == 1 {
                text.trim_start_matches('\u{feff}')
            } else {
                text
            };
            if text.trim().is_empty() {
                continue;
            }
            let Some(fields) = split_csv(text) else {
                return Ok(Some(Err(RowError::at_line(line, "broken CSV quoting"))));
            };
            // Only the first non-blank line may name the columns.
            let first = !self.started;
            self.started = true;
            if first {
                if let Some(n) = header(&fields) {
                    self.named = Some(n);
                    continue;
                }
            }
            return Ok(Some(to_row(line, fields, self.named.as_ref())));
        }
    }
}

/// A header line: it names `src`, `dst`, `channel` and a start column, and
/// its would-be start field is not a time.
fn header(fields: &[String]) -> Option<Columns> {
    if fields.get(9).is_some_and(|f| parse_local(f).is_some()) {
        return None;
    }
    Columns::from_header(fields)
}

impl<R: BufRead> Iterator for CdrReader<R> {
    type Item = std::io::Result<Result<CdrRow, RowError>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_row().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str) -> Vec<Result<CdrRow, RowError>> {
        CdrReader::new(text.as_bytes())
            .map(|r| r.unwrap())
            .collect()
    }

    const NEW: &str = r#""","5551234567","2125550100","from-pstn","""Juan Perez"" <5551234567>","SIP/pstn-00000000","SIP/1001-00000001","Dial","SIP/1001,30,tT","2026-11-22 19:10:26","2026-11-22 19:10:28","2026-11-22 19:10:31",5,3,"ANSWERED","DOCUMENTATION","1795374626.0","did-1001","","1795374626.0",0"#;

    #[test]
    fn newcdrcolumns_row() {
        let r = rows(NEW).remove(0).unwrap();
        assert_eq!(r.line, 1);
        assert_eq!(r.clid, "\"Juan Perez\" <5551234567>");
        assert_eq!(r.channel, "SIP/pstn-00000000");
        assert_eq!(r.start, LocalTime(1795374626.0));
        assert_eq!(r.answer, Some(LocalTime(1795374628.0)));
        assert_eq!(r.uniqueid.as_deref(), Some("1795374626.0"));
        assert_eq!(r.userfield.as_deref(), Some("did-1001"));
        assert_eq!(r.linkedid.as_deref(), Some("1795374626.0"));
        assert_eq!(r.sequence, Some(0));
    }

    #[test]
    fn classic_layouts() {
        let classic = r#""","1001","1002","from-internal","""Ana"" <1001>","SIP/1001-0000000a","SIP/1002-0000000b","Dial","SIP/1002,30","2026-11-22 19:10:26",,"2026-11-22 19:10:30",4,0,"NO ANSWER","DOCUMENTATION""#;
        let r = rows(classic).remove(0).unwrap();
        assert_eq!(r.answer, None);
        assert_eq!(r.uniqueid, None);
        assert_eq!(r.linkedid, None);
        let with_uid = format!("{classic},\"1795374626.7\"");
        let r = rows(&with_uid).remove(0).unwrap();
        assert_eq!(r.uniqueid.as_deref(), Some("1795374626.7"));
        assert_eq!(r.userfield, None);
        let with_uf = format!("{classic},\"recorded\"");
        let r = rows(&with_uf).remove(0).unwrap();
        assert_eq!(r.uniqueid, None);
        assert_eq!(r.userfield.as_deref(), Some("recorded"));
        let both = format!("{classic},\"1795374626.7\",\"x\"");
        let r = rows(&both).remove(0).unwrap();
        assert_eq!(r.uniqueid.as_deref(), Some("1795374626.7"));
        assert_eq!(r.userfield.as_deref(), Some("x"));
        let new_only = format!("{classic},\"\",\"1795374626.7\",12");
        let r = rows(&new_only).remove(0).unwrap();
        assert_eq!(r.linkedid.as_deref(), Some("1795374626.7"));
        assert_eq!(r.sequence, Some(12));
    }

    #[test]
    fn malformed_rows_are_reported_with_their_line_and_reading_goes_on() {
        let text = format!(
            "{NEW}\n\nnot,a,cdr\n\"broken,\"quote\n{}\n{}\n{NEW}\n",
            NEW.replace("2026-11-22 19:10:26", "yesterday"),
            NEW.replace(",5,3,", ",five,3,"),
        );
        let got = rows(&text);
        let lines: Vec<Result<u64, u64>> = got
            .iter()
            .map(|r| r.as_ref().map(|r| r.line).map_err(|e| e.line))
            .collect();
        assert_eq!(lines, [Ok(1), Err(3), Err(4), Err(5), Err(6), Ok(7)]);
        let msgs: Vec<String> = got
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(msgs[0].contains("3 fields"), "{msgs:?}");
        assert!(msgs[1].contains("quoting"), "{msgs:?}");
        assert!(msgs[2].contains("start"), "{msgs:?}");
        assert!(msgs[3].contains("duration"), "{msgs:?}");
    }

    #[test]
    fn long_lines_crlf_bom_and_latin1() {
        let long = "x".repeat(MAX_LINE + 10);
        let latin1: Vec<u8> = NEW.replace("Juan Perez", "Jos\u{fffd}").bytes().collect();
        let mut text = Vec::new();
        text.extend_from_slice("\u{feff}".as_bytes());
        text.extend_from_slice(NEW.as_bytes());
        text.extend_from_slice(b"\r\n");
        text.extend_from_slice(long.as_bytes());
        text.extend_from_slice(b"\n");
        // Replace the replacement character by a raw Latin-1 byte.
        let s = String::from_utf8(latin1).unwrap();
        let raw = s.replace('\u{fffd}', "\u{0}");
        let mut bytes = raw.into_bytes();
        for b in bytes.iter_mut() {
            if *b == 0 {
                *b = 0xe9;
            }
        }
        text.extend_from_slice(&bytes);
        let mut rd = CdrReader::new(&text[..]);
        let got: Vec<_> = (&mut rd).map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].as_ref().unwrap().channel, "SIP/pstn-00000000");
        assert!(got[1].as_ref().unwrap_err().message.contains("longer"));
        assert!(got[2].as_ref().unwrap().clid.contains("Jos\u{fffd}"));
        assert_eq!(rd.position(), text.len() as u64);
    }

    #[test]
    fn database_export_with_a_header() {
        let text = "calldate,clid,src,dst,dcontext,channel,dstchannel,lastapp,lastdata,duration,billsec,disposition,amaflags,accountcode,uniqueid,userfield,linkedid,sequence\n\
            2026-11-22 19:10:26,\"\"\"Juan\"\" <555>\",555,2125550100,from-pstn,SIP/pstn-1,SIP/1001-2,Dial,\"SIP/1001,30\",5,3,ANSWERED,3,,1795374626.0,,1795374626.0,4\n";
        let got = rows(text);
        assert_eq!(got.len(), 1);
        let r = got[0].as_ref().unwrap();
        assert_eq!(r.line, 2);
        assert_eq!(r.end, LocalTime(1795374631.0));
        assert_eq!(r.answer, Some(LocalTime(1795374628.0)));
        assert_eq!(r.linkedid.as_deref(), Some("1795374626.0"));
        assert_eq!(r.sequence, Some(4));
    }

    #[test]
    fn csv_splitting() {
        assert_eq!(
            split_csv(r#""a,b","","c""d",1,,"#).unwrap(),
            ["a,b", "", "c\"d", "1", "", ""]
        );
        assert_eq!(split_csv("").unwrap(), [""]);
        assert_eq!(split_csv(r#""open"#), None);
        assert_eq!(split_csv(r#""a"b"#), None);
        assert_eq!(split_csv(r#"a"b"#), None);
    }
}
