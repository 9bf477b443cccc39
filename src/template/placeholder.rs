//! Meetip-style `%NAME%` / `%*NAME*%` placeholders: names, what each one
//! means on each kind of event, and the scanner that finds them in text.
//!
//! The user-facing table is in the [module documentation](super).

use crate::model::{CallRecord, CallStateEvent, Direction, LegEvent, ModelEvent, State};

/// A placeholder name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Placeholder {
    /// `CALLER_ID`: the caller's number (after `rewrite`).
    CallerId,
    /// `CALLER_NAME`: the caller's name.
    CallerName,
    /// `DIALED`: the dialed number (after `rewrite`).
    Dialed,
    /// `EXTENSION`: the extension the event is about.
    Extension,
    /// `QUEUE_NAME`: the queue.
    QueueName,
    /// `ID`: the session id.
    Id,
    /// `DURATION`: whole seconds.
    Duration,
    /// `DURACION`: same as `DURATION`.
    Duracion,
    /// `BILLSEC`: whole seconds talked.
    Billsec,
    /// `STATE`: `ringing` / `answered` / `hungup`.
    State,
    /// `ESTADO`: `timbre` / `descolgado` / `colgado`.
    Estado,
    /// `DIRECTION`: `incoming` / `outgoing` / `internal`.
    Direction,
    /// `SENTIDO`: `entrante` / `saliente` / `interna`.
    Sentido,
    /// `DISPOSITION`: `ANSWERED`, `NO ANSWER`, `BUSY`, `FAILED`, `ABANDONED`.
    Disposition,
    /// `STARTED_AT`: RFC 3339.
    StartedAt,
    /// `ANSWERED_AT`: RFC 3339.
    AnsweredAt,
    /// `ENDED_AT`: RFC 3339.
    EndedAt,
    /// `PBX`: the PBX id.
    Pbx,
    /// `RECORDING_URL`: the call's recording, when the PBX gave one.
    RecordingUrl,
}

/// Every placeholder, in documentation order.
pub const ALL: [Placeholder; 19] = [
    Placeholder::CallerId,
    Placeholder::CallerName,
    Placeholder::Dialed,
    Placeholder::Extension,
    Placeholder::QueueName,
    Placeholder::Id,
    Placeholder::Duration,
    Placeholder::Duracion,
    Placeholder::Billsec,
    Placeholder::State,
    Placeholder::Estado,
    Placeholder::Direction,
    Placeholder::Sentido,
    Placeholder::Disposition,
    Placeholder::StartedAt,
    Placeholder::AnsweredAt,
    Placeholder::EndedAt,
    Placeholder::Pbx,
    Placeholder::RecordingUrl,
];

impl Placeholder {
    /// The upper-case name used in templates (`CALLER_ID`).
    pub fn name(self) -> &'static str {
        match self {
            Placeholder::CallerId => "CALLER_ID",
            Placeholder::CallerName => "CALLER_NAME",
            Placeholder::Dialed => "DIALED",
            Placeholder::Extension => "EXTENSION",
            Placeholder::QueueName => "QUEUE_NAME",
            Placeholder::Id => "ID",
            Placeholder::Duration => "DURATION",
            Placeholder::Duracion => "DURACION",
            Placeholder::Billsec => "BILLSEC",
            Placeholder::State => "STATE",
            Placeholder::Estado => "ESTADO",
            Placeholder::Direction => "DIRECTION",
            Placeholder::Sentido => "SENTIDO",
            Placeholder::Disposition => "DISPOSITION",
            Placeholder::StartedAt => "STARTED_AT",
            Placeholder::AnsweredAt => "ANSWERED_AT",
            Placeholder::EndedAt => "ENDED_AT",
            Placeholder::Pbx => "PBX",
            Placeholder::RecordingUrl => "RECORDING_URL",
        }
    }

    /// Looks a name up (exact, upper case).
    pub fn from_name(name: &str) -> Option<Self> {
        ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Whether the value is a whole number of seconds (a JSON number in the
    /// handlebars `ph` object).
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            Placeholder::Duration | Placeholder::Duracion | Placeholder::Billsec
        )
    }

    /// The value for an event, `None` when the event has none (rendered as
    /// an empty string).
    pub fn value(self, ev: &ModelEvent) -> Option<String> {
        match ev {
            ModelEvent::Leg(l) => leg_value(self, l),
            ModelEvent::CallState(c) => call_state_value(self, c),
            ModelEvent::Call(r) => record_value(self, r),
        }
    }
}

/// Spanish name of a state (Meetip's `ESTADO`).
pub fn estado(s: State) -> &'static str {
    match s {
        State::Ringing => "timbre",
        State::Answered => "descolgado",
        State::Hungup => "colgado",
    }
}

/// Spanish name of a direction (Meetip's `SENTIDO`).
pub fn sentido(d: Direction) -> &'static str {
    match d {
        Direction::Incoming => "entrante",
        Direction::Outgoing => "saliente",
        Direction::Internal => "interna",
    }
}

fn secs(v: f64) -> String {
    format!("{}", v.round() as i64)
}

/// An answering party that is a person on an extension (not `external`).
fn ext(v: &Option<String>) -> Option<&String> {
    v.as_ref()
        .filter(|s| s.as_str() != "external" && !s.is_empty())
}

fn leg_value(p: Placeholder, l: &LegEvent) -> Option<String> {
    use Placeholder as P;
    match p {
        P::CallerId => l.caller_number.clone(),
        P::CallerName => l.caller_name.clone(),
        P::Dialed => l.dialed_number.clone(),
        P::Extension => Some(l.extension.clone()),
        P::QueueName => l.queue.clone(),
        P::Id => Some(l.session_id.clone()),
        P::Duration | P::Duracion => l.duration.map(secs),
        P::Billsec => l.billsec.map(secs),
        P::State => Some(l.state.as_str().into()),
        P::Estado => Some(estado(l.state).into()),
        P::Direction => Some(l.direction.as_str().into()),
        P::Sentido => Some(sentido(l.direction).into()),
        P::Disposition => l.disposition.map(|d| d.as_str().into()),
        P::StartedAt => Some(l.at.to_rfc3339()),
        P::AnsweredAt => (l.state == State::Answered).then(|| l.at.to_rfc3339()),
        P::EndedAt => (l.state == State::Hungup).then(|| l.at.to_rfc3339()),
        P::Pbx => Some(l.pbx.clone()),
        P::RecordingUrl => None,
    }
}

fn call_state_value(p: Placeholder, c: &CallStateEvent) -> Option<String> {
    use Placeholder as P;
    match p {
        P::CallerId => c.caller_number.clone(),
        P::CallerName => c.caller_name.clone(),
        P::Dialed => c.dialed_number.clone(),
        P::Extension => match c.direction {
            Direction::Outgoing => c.caller_number.clone(),
            _ => ext(&c.answered_by).cloned(),
        },
        P::QueueName => c.queue.clone(),
        P::Id => Some(c.session_id.clone()),
        P::Duration | P::Duracion | P::Billsec | P::Disposition | P::EndedAt => None,
        P::State => Some(c.state.as_str().into()),
        P::Estado => Some(estado(c.state).into()),
        P::Direction => Some(c.direction.as_str().into()),
        P::Sentido => Some(sentido(c.direction).into()),
        P::StartedAt => Some(c.at.to_rfc3339()),
        P::AnsweredAt => (c.state == State::Answered).then(|| c.at.to_rfc3339()),
        P::Pbx => Some(c.pbx.clone()),
        P::RecordingUrl => None,
    }
}

fn record_value(p: Placeholder, r: &CallRecord) -> Option<String> {
    use Placeholder as P;
    match p {
        P::CallerId => r.caller_number.clone(),
        P::CallerName => r.caller_name.clone(),
        P::Dialed => r.dialed_number.clone(),
        P::Extension => match r.direction {
            Direction::Outgoing => r
                .caller_number
                .clone()
                .or_else(|| r.extensions_rung.first().cloned()),
            _ => ext(&r.final_answered_by)
                .or_else(|| ext(&r.answered_by))
                .or_else(|| r.extensions_rung.first())
                .cloned(),
        },
        P::QueueName => r.queue.clone(),
        P::Id => Some(r.session_id.clone()),
        P::Duration | P::Duracion => Some(secs(r.duration)),
        P::Billsec => Some(secs(r.billsec)),
        P::State => Some(State::Hungup.as_str().into()),
        P::Estado => Some(estado(State::Hungup).into()),
        P::Direction => Some(r.direction.as_str().into()),
        P::Sentido => Some(sentido(r.direction).into()),
        P::Disposition => Some(r.disposition.as_str().into()),
        P::StartedAt => Some(r.started_at.to_rfc3339()),
        P::AnsweredAt => r.answered_at.map(|t| t.to_rfc3339()),
        P::EndedAt => Some(r.ended_at.to_rfc3339()),
        P::Pbx => Some(r.pbx.clone()),
        P::RecordingUrl => r.recording_url.clone(),
    }
}

/// Every placeholder's value for one event, computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    vals: Vec<Option<String>>,
}

impl Values {
    /// Computes all values for an event.
    pub fn of(ev: &ModelEvent) -> Self {
        Self {
            vals: ALL.iter().map(|p| p.value(ev)).collect(),
        }
    }

    /// Values for a rewritten event: every value from `ev`, except
    /// `EXTENSION`, which comes from the event before rewriting (on
    /// outgoing calls it is the caller number, an extension, not a number
    /// to rewrite).
    pub fn of_rewritten(ev: &ModelEvent, original: &ModelEvent) -> Self {
        let mut v = Self::of(ev);
        if let Some(i) = ALL.iter().position(|p| *p == Placeholder::Extension) {
            v.vals[i] = Placeholder::Extension.value(original);
        }
        v
    }

    /// Replaces one value (sources that know better than the event, such
    /// as FastAGI's calling extension).
    pub fn set(&mut self, p: Placeholder, v: Option<String>) {
        if let Some(i) = ALL.iter().position(|q| *q == p) {
            self.vals[i] = v;
        }
    }

    /// One value (`""` when missing).
    pub fn get(&self, p: Placeholder) -> &str {
        let i = ALL.iter().position(|q| *q == p).unwrap_or(0);
        self.vals.get(i).and_then(|v| v.as_deref()).unwrap_or("")
    }

    /// The `ph` object of the handlebars context: every name, a string, a
    /// whole number (`DURATION`, `DURACION`, `BILLSEC`) or null when missing.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (p, v) in ALL.iter().zip(&self.vals) {
            let j = match v {
                None => serde_json::Value::Null,
                Some(s) if p.is_integer() => s
                    .parse::<i64>()
                    .map(serde_json::Value::from)
                    .unwrap_or_else(|_| serde_json::Value::String(s.clone())),
                Some(s) => serde_json::Value::String(s.clone()),
            };
            m.insert(p.name().to_string(), j);
        }
        serde_json::Value::Object(m)
    }
}

/// What a `%…%` token in a template is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A known placeholder.
    Known(Placeholder),
    /// `%UPPER_CASE%` that is no placeholder: a configuration error.
    Unknown,
    /// A known name in the wrong case (`%caller_id%`): a configuration error.
    WrongCase(Placeholder),
}

/// A placeholder token found in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    /// Byte offset of the leading `%`.
    pub start: usize,
    /// Byte offset just past the trailing `%`.
    pub end: usize,
    /// The token as written (`%*CALLER_ID*%`).
    pub text: &'a str,
    /// The name inside (`CALLER_ID`).
    pub name: &'a str,
    /// What it is.
    pub kind: TokenKind,
}

/// Finds the placeholder tokens in `s`, left to right.
///
/// A token is `%NAME%` or `%*NAME*%` where NAME is letters and `_`. An
/// all-upper-case NAME is a placeholder (known or not), except a name of
/// exactly two hex letters (`%AB%`, `%FF%`), which is taken as part of
/// percent-encoded text; a NAME with lower-case letters is plain text unless
/// it is a known placeholder in the wrong case. Anything else with `%`
/// (`%20`, `%2F`, `100%`) is plain text.
pub fn tokens(s: &str) -> Vec<Token<'_>> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            i += 1;
            continue;
        }
        if let Some(t) = token_at(s, i) {
            i = t.end;
            out.push(t);
        } else {
            i += 1;
        }
    }
    out
}

fn token_at(s: &str, i: usize) -> Option<Token<'_>> {
    let b = s.as_bytes();
    let starred = b.get(i + 1) == Some(&b'*');
    let name_start = if starred { i + 2 } else { i + 1 };
    let mut j = name_start;
    while j < b.len() && (b[j].is_ascii_alphabetic() || b[j] == b'_') {
        j += 1;
    }
    if j == name_start {
        return None;
    }
    let end = if starred {
        if b.get(j) == Some(&b'*') && b.get(j + 1) == Some(&b'%') {
            j + 2
        } else {
            return None;
        }
    } else if b.get(j) == Some(&b'%') {
        j + 1
    } else {
        return None;
    };
    let name = &s[name_start..j];
    let kind = if name.bytes().all(|c| c.is_ascii_uppercase() || c == b'_') {
        if name.len() == 2 && name.bytes().all(|c| (b'A'..=b'F').contains(&c)) {
            return None;
        }
        match Placeholder::from_name(name) {
            Some(p) => TokenKind::Known(p),
            None => TokenKind::Unknown,
        }
    } else {
        TokenKind::WrongCase(Placeholder::from_name(&name.to_ascii_uppercase())?)
    };
    Some(Token {
        start: i,
        end,
        text: &s[i..end],
        name,
        kind,
    })
}

/// Levenshtein distance (small strings).
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate to `word`, when it is close enough to be a typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| (distance(&w, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= (c.len().max(w.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// The hint for an unknown placeholder token.
pub fn unknown_hint(name: &str) -> String {
    let list: Vec<&str> = ALL.iter().map(|p| p.name()).collect();
    let valid = format!(
        "valid placeholders: {}; write %25 for a literal %",
        list.join(", ")
    );
    match did_you_mean(name, list.iter().copied()) {
        Some(s) => format!("did you mean %{s}%? {valid}"),
        None => valid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<(String, TokenKind)> {
        tokens(s)
            .into_iter()
            .map(|t| (t.text.to_string(), t.kind))
            .collect()
    }

    #[test]
    fn scanner_finds_both_spellings() {
        assert_eq!(
            kinds("a=%CALLER_ID%&b=%*DURACION*%"),
            vec![
                (
                    "%CALLER_ID%".into(),
                    TokenKind::Known(Placeholder::CallerId)
                ),
                (
                    "%*DURACION*%".into(),
                    TokenKind::Known(Placeholder::Duracion)
                ),
            ]
        );
    }

    #[test]
    fn scanner_leaves_percent_encoding_alone() {
        for s in [
            "a%20b", "%2F%2f", "100%", "%%", "%", "%AB%CD", "%FF%FE%", "x%C3%A9y", "%*%", "%*AB%",
            "%caller%", "%Abc%",
        ] {
            assert!(kinds(s).is_empty(), "{s}: {:?}", kinds(s));
        }
    }

    #[test]
    fn scanner_flags_unknown_and_wrong_case() {
        assert_eq!(
            kinds("%CALLER_IDD% %caller_id% %*EXTENSION*%%ID%"),
            vec![
                ("%CALLER_IDD%".into(), TokenKind::Unknown),
                (
                    "%caller_id%".into(),
                    TokenKind::WrongCase(Placeholder::CallerId)
                ),
                (
                    "%*EXTENSION*%".into(),
                    TokenKind::Known(Placeholder::Extension)
                ),
                ("%ID%".into(), TokenKind::Known(Placeholder::Id)),
            ]
        );
        assert_eq!(
            kinds("%%ID%"),
            vec![("%ID%".into(), TokenKind::Known(Placeholder::Id))]
        );
    }

    #[test]
    fn hints_suggest_near_misses() {
        assert!(unknown_hint("CALLER_IDD").starts_with("did you mean %CALLER_ID%?"));
        assert!(unknown_hint("CALLERID").starts_with("did you mean %CALLER_ID%?"));
        assert!(unknown_hint("DURATON").starts_with("did you mean %DURATION%?"));
        assert!(unknown_hint("ZZZZZZZZ").starts_with("valid placeholders: CALLER_ID"));
    }

    #[test]
    fn every_name_round_trips() {
        for p in ALL {
            assert_eq!(Placeholder::from_name(p.name()), Some(p));
        }
    }
}
