//! The rows of one call → a finished [`CallRecord`], with the live model's
//! semantics (see the `model` docs and the README's "How the model
//! decides"). The mapping, and what CDR cannot tell, is documented in
//! [`super`].

use crate::model::{CallFacts, CallRecord, Direction, Disposition, EndReason};
use crate::normalize::{Classifier, Party};

use super::cdr::CdrRow;
use super::times::{id_epoch, implied_offset, zone_offset, CdrTimezone, LocalTime};

/// Why a group of rows gives no record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotACall {
    /// Only a Local channel half (`;2`) with no linkedid to join its call:
    /// its rows belong to another call (a transfer's consultation, a ring
    /// group member) that CDR alone cannot name.
    LocalHalf,
    /// No row names a phone or a trunk.
    NoParty,
}

/// A built record and what was noticed building it.
#[derive(Debug, Clone, PartialEq)]
pub struct Built {
    /// The record.
    pub record: CallRecord,
    /// The UTC offset (seconds east) its start was read at.
    pub offset: i32,
    /// The offset the call's id implies, when it has an epoch and it
    /// differs from `offset` (the configured time zone looks wrong).
    pub offset_mismatch: Option<i32>,
}

/// A party of the call, as the live model sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Ext(String),
    Trunk,
}

fn who(classifier: &Classifier, channel: &str, context: Option<&str>) -> Option<Who> {
    if channel.trim().is_empty() {
        return None;
    }
    match classifier.classify(channel, context) {
        Party::Extension(e) => Some(Who::Ext(e.into())),
        Party::Trunk(_) => Some(Who::Trunk),
        // A Local channel stands for the extension it dials, when it is one.
        Party::Local(e) if classifier.is_extension_number(&e) => Some(Who::Ext(e.into())),
        Party::Local(_) | Party::Placeholder => None,
    }
}

fn is_local(channel: &str) -> bool {
    channel
        .split_once('/')
        .is_some_and(|(t, _)| t.eq_ignore_ascii_case("Local"))
}

fn is_local_half_2(channel: &str) -> bool {
    is_local(channel) && (channel.ends_with(";2") || channel.ends_with(",2"))
}

/// `"Name" <number>` → (name, number).
pub fn split_clid(clid: &str) -> (Option<String>, Option<String>) {
    let clid = clid.trim();
    let (name, num) = match (clid.rfind('<'), clid.ends_with('>')) {
        (Some(i), true) => (&clid[..i], Some(&clid[i + 1..clid.len() - 1])),
        _ => (clid, None),
    };
    let name = name.trim().trim_matches('"').trim();
    let clean = |s: &str| {
        let s = s.trim();
        (!s.is_empty() && s != "<unknown>" && s != "unknown").then(|| s.to_string())
    };
    (clean(name), num.and_then(clean))
}

fn number(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty() && s != "<unknown>").then(|| s.to_string())
}

fn is_app(row: &CdrRow, app: &str) -> bool {
    row.lastapp.trim().eq_ignore_ascii_case(app)
}

/// The recording URL a `userfield` holds, when it clearly is one.
pub fn recording_url(userfield: Option<&str>) -> Option<String> {
    let u = userfield?.trim();
    let lower = u.to_ascii_lowercase();
    let ok = (lower.starts_with("http://") || lower.starts_with("https://"))
        && u.len() > "https://".len()
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then(|| u.to_string())
}

/// How this call's CDR times become real time: a fixed offset (from its
/// id with `auto`), or the configured zone time by time (daylight saving
/// can change during a call); and the offset its id implies when that
/// disagrees with the zone.
fn offset_for<'z>(root: &CdrRow, tz: &'z CdrTimezone) -> (Clock<'z>, Option<i32>) {
    let implied = root
        .uniqueid
        .as_deref()
        .or(root.linkedid.as_deref())
        .and_then(id_epoch)
        .and_then(|e| implied_offset(root.start, e));
    match tz {
        CdrTimezone::Zone(z) => {
            let at_start = zone_offset(z, root.start);
            (Clock::Zone(z), implied.filter(|i| *i != at_start))
        }
        CdrTimezone::Auto { fallback } => {
            (implied.map_or(Clock::Zone(fallback), Clock::Fixed), None)
        }
    }
}

/// See [`offset_for`].
enum Clock<'z> {
    Fixed(i32),
    Zone(&'z jiff::tz::TimeZone),
}

impl Clock<'_> {
    fn utc(&self, t: LocalTime) -> f64 {
        match self {
            Clock::Fixed(o) => t.to_utc(*o),
            Clock::Zone(z) => t.in_zone(z),
        }
    }
}

/// Builds the record of one call from its rows (any order).
pub fn build(
    mut rows: Vec<CdrRow>,
    classifier: &Classifier,
    pbx: &str,
    tz: &CdrTimezone,
) -> Result<Built, NotACall> {
    // Creation order: start, then the CDR sequence (or the file order).
    rows.sort_by(|a, b| {
        a.start
            .0
            .total_cmp(&b.start.0)
            .then(
                a.sequence
                    .unwrap_or(i64::MAX)
                    .cmp(&b.sequence.unwrap_or(i64::MAX)),
            )
            .then(a.line.cmp(&b.line))
    });
    let Some(first) = rows.first() else {
        return Err(NotACall::NoParty);
    };
    // The call's first channel: its own row carries uniqueid == linkedid.
    let root = rows
        .iter()
        .find(|r| r.linkedid.is_some() && r.uniqueid.is_some() && r.linkedid == r.uniqueid)
        .unwrap_or(first);
    if root.linkedid.is_none() && is_local_half_2(&root.channel) {
        return Err(NotACall::LocalHalf);
    }
    let (clock, offset_mismatch) = offset_for(root, tz);
    let offset = (root.start.0 - clock.utc(root.start)).round() as i32;
    let utc = |t: LocalTime| clock.utc(t);
    let root_chan = root.channel.clone();
    let root_ctx = (!root.dcontext.is_empty()).then_some(root.dcontext.as_str());
    let root_who = who(classifier, &root_chan, root_ctx);
    // Rows that say who was called (the `h` extension's do not).
    let real: Vec<&CdrRow> = rows.iter().filter(|r| !r.is_h()).collect();
    let root_rows: Vec<&CdrRow> = real
        .iter()
        .copied()
        .filter(|r| r.channel == root_chan)
        .collect();

    // Every other party: dialed channels, and other party A channels.
    let mut others: Vec<Who> = Vec::new();
    for r in &real {
        if r.channel != root_chan {
            let ctx = (!r.dcontext.is_empty()).then_some(r.dcontext.as_str());
            if let Some(w) = who(classifier, &r.channel, ctx) {
                others.push(w);
            }
        }
        if r.dstchannel != root_chan {
            if let Some(w) = who(classifier, &r.dstchannel, None) {
                others.push(w);
            }
        }
    }
    // A channel the PBX itself created first (Originate: its row shows the
    // outgoing-channel pseudo application `AppDial`), or a Local root.
    let originated = is_local(&root_chan)
        || root_rows
            .first()
            .is_some_and(|r| r.lastapp.trim().to_ascii_lowercase().starts_with("appdial"));
    // A Local root stands for the first real party.
    let root_who = match root_who {
        Some(w) => Some(w),
        None if is_local(&root_chan) => others.first().cloned(),
        None => None,
    };
    let Some(root_who) = root_who else {
        return Err(NotACall::NoParty);
    };
    let has_trunk = others.contains(&Who::Trunk);
    let has_ext = others.iter().any(|w| matches!(w, Who::Ext(_)));
    let direction = if originated {
        if has_trunk || root_who == Who::Trunk {
            Direction::Outgoing
        } else if has_ext && matches!(root_who, Who::Ext(_)) {
            Direction::Internal
        } else {
            Direction::Outgoing
        }
    } else {
        match root_who {
            Who::Trunk => Direction::Incoming,
            _ if has_trunk => Direction::Outgoing,
            _ => Direction::Internal,
        }
    };

    // The real caller.
    let (caller_number, caller_name) = match direction {
        Direction::Incoming => (number(&root.src), split_clid(&root.clid).0),
        _ => {
            // The calling extension, from its channel (`src` may hold the
            // company number the outbound route set).
            let caller = match &root_who {
                Who::Ext(e) => Some((e.clone(), root)),
                Who::Trunk => real
                    .iter()
                    .find_map(|r| match who(classifier, &r.channel, None) {
                        Some(Who::Ext(e)) => Some((e, *r)),
                        _ => None,
                    }),
            };
            match caller {
                Some((e, row)) => (Some(e), split_clid(&row.clid).0),
                None => (None, None),
            }
        }
    };
    let caller_ext = match direction {
        Direction::Incoming => None,
        _ => caller_number.clone(),
    };

    // The number dialed: the first channel's destination extension.
    let dialed_number = root_rows
        .iter()
        .chain(real.iter())
        .find_map(|r| number(&r.dst));

    let queue = real.iter().find(|r| is_app(r, "Queue")).and_then(|r| {
        let q = r.lastdata.split(',').next().unwrap_or("").trim();
        (!q.is_empty()).then(|| q.to_string())
    });

    // Extensions offered the call, in order (a click-to-call's phone first).
    let mut extensions_rung: Vec<String> = Vec::new();
    let mut rung = |e: &str| {
        if !extensions_rung.iter().any(|x| x == e) {
            extensions_rung.push(e.to_string());
        }
    };
    if originated {
        if let Who::Ext(e) = &root_who {
            rung(e);
        }
    }
    for r in &real {
        if r.dstchannel == root_chan {
            continue;
        }
        if let Some(Who::Ext(e)) = who(classifier, &r.dstchannel, None) {
            if caller_ext.as_deref() != Some(e.as_str()) || originated {
                rung(&e);
            }
        }
    }

    // Answers: a dialed party that answered. A transferred call's row names
    // the transferring party, not a new answer.
    struct Answer {
        by: String,
        at: f64,
        end: f64,
        trunk: bool,
        estimated: bool,
    }
    let mut answers: Vec<Answer> = Vec::new();
    for r in &real {
        if r.disposition != "ANSWERED" || r.dstchannel == root_chan {
            continue;
        }
        let app = r.lastapp.trim().to_ascii_lowercase();
        if app == "transferred call" || app == "transfered call" {
            continue;
        }
        let Some(w) = who(classifier, &r.dstchannel, None) else {
            continue;
        };
        let Some(at) = r.answer else { continue };
        let mut at = utc(at);
        let mut estimated = false;
        if app == "queue" {
            // The answer column is the PBX's Answer() before the queue.
            // The member answered when the other members' attempts that
            // ended before this one's end were cut (ring-all), at the
            // latest: use the last such end.
            estimated = true;
            for s in &real {
                if std::ptr::eq(*s, *r) || !is_app(s, "Queue") || s.disposition == "ANSWERED" {
                    continue;
                }
                let e = utc(s.end);
                if e <= utc(r.end) && e > at {
                    at = e;
                }
            }
        }
        let (by, trunk) = match w {
            Who::Ext(e) => (e, false),
            Who::Trunk => ("external".to_string(), true),
        };
        answers.push(Answer {
            by,
            at,
            end: utc(r.end),
            trunk,
            estimated,
        });
    }
    let first_answer = answers.iter().min_by(|a, b| a.at.total_cmp(&b.at));
    let answered_at = first_answer.map(|a| a.at);
    let answered_by = first_answer.map(|a| a.by.clone());
    // Who had the call at the end: of the answers, the one that lasted
    // longest (later answer on a tie); trunks only on outgoing calls.
    let final_answered_by = if answered_at.is_some() {
        answers
            .iter()
            .filter(|a| !a.trunk || direction == Direction::Outgoing)
            .max_by(|a, b| a.end.total_cmp(&b.end).then(a.at.total_cmp(&b.at)))
            .map(|a| a.by.clone())
            .or_else(|| answered_by.clone())
    } else {
        None
    };
    let approximate = first_answer.is_some_and(|a| a.estimated);

    let disposition = if answered_at.is_some() {
        Disposition::Answered
    } else if queue.is_some() {
        // Still in the queue when it ended (the last application of the
        // caller's channel): the caller gave up.
        let last = root_rows
            .iter()
            .max_by(|a, b| a.end.0.total_cmp(&b.end.0).then(a.line.cmp(&b.line)));
        if last.is_some_and(|r| is_app(r, "Queue")) {
            Disposition::Abandoned
        } else {
            Disposition::NoAnswer
        }
    } else {
        let any = |d: &str| real.iter().any(|r| r.disposition == d);
        if any("NO ANSWER") {
            Disposition::NoAnswer
        } else if any("BUSY") {
            Disposition::Busy
        } else if any("FAILED") || any("CONGESTION") {
            Disposition::Failed
        } else {
            Disposition::NoAnswer
        }
    };

    let started = rows
        .iter()
        .map(|r| utc(r.start))
        .fold(f64::INFINITY, f64::min);
    let ended = rows
        .iter()
        .map(|r| utc(r.end))
        .fold(f64::NEG_INFINITY, f64::max);
    let session_id = match (&root.linkedid, &root.uniqueid) {
        (Some(l), _) => l.trim().to_string(),
        (None, Some(u)) => u.trim().to_string(),
        // No id at all: stable, but not the PBX's.
        (None, None) => format!("cdr-{}-{}", started as i64, root_chan),
    };
    let record = CallRecord::new(
        CallFacts {
            session_id,
            pbx: pbx.to_string(),
            direction,
            caller_number,
            caller_name,
            dialed_number,
            queue,
            extensions_rung,
            answered_by,
            final_answered_by,
            disposition,
            end_reason: EndReason::Hangup,
            recording_url: recording_url(root.userfield.as_deref()),
            approximate,
            extra: Default::default(),
        },
        started,
        answered_at,
        ended,
    );
    Ok(Built {
        record,
        offset,
        offset_mismatch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clids() {
        assert_eq!(
            split_clid("\"Juan Perez\" <5551234567>"),
            (Some("Juan Perez".into()), Some("5551234567".into()))
        );
        assert_eq!(split_clid("<1001>"), (None, Some("1001".into())));
        assert_eq!(split_clid("Ana"), (Some("Ana".into()), None));
        assert_eq!(split_clid("\"\" <unknown>"), (None, None));
        assert_eq!(split_clid(""), (None, None));
    }

    #[test]
    fn recording_urls() {
        assert_eq!(
            recording_url(Some(" https://rec.example.com/a.wav ")).as_deref(),
            Some("https://rec.example.com/a.wav")
        );
        assert_eq!(recording_url(Some("did-1001")), None);
        assert_eq!(recording_url(Some("http://")), None);
        assert_eq!(recording_url(Some("http://x y")), None);
        assert_eq!(recording_url(None), None);
    }
}
