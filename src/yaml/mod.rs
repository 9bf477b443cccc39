//! YAML documents that know where every value is.
//!
//! The configuration and rule-set files are read in three steps:
//!
//! 1. [`parse`]: the text becomes a [`Node`] tree (events of
//!    `saphyr-parser`, the YAML 1.2 parser of the saphyr project). Every
//!    node keeps its [`Span`]; every mapping entry keeps the span of its key.
//!    Duplicate keys, tags, complex keys and a second document are
//!    [`Problem`]s; aliases are expanded (bounded).
//! 2. [`de::from_node`]: the tree is deserialized into ordinary
//!    `#[derive(Deserialize)]` structs by a deserializer that **does not
//!    stop at the first problem**: an unknown key is reported and skipped,
//!    a value of the wrong type is reported and replaced by a placeholder
//!    ("poisoned"), a missing required key is reported and filled with a
//!    placeholder, and deserialization is run again until it succeeds. The
//!    result is the value plus every problem plus the poisoned paths (so
//!    that later checks do not report follow-on errors there).
//! 3. Later checks report problems by [`Path`] (`pbx[0].ami.secret`); the
//!    tree turns a path into a position ([`Node::locate`]).
//!
//! Positions are 1-based line and column in characters.

pub mod de;
mod path;
mod value;

use std::borrow::Cow;
use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

pub use path::{Path, Seg};
pub use value::{Mapping, Number, Value};

/// A position in the text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// 0-based index in characters from the start of the text.
    pub index: usize,
}

impl Pos {
    fn from_marker(m: saphyr_parser::Marker) -> Self {
        Self {
            line: m.line(),
            col: m.col() + 1,
            index: m.index(),
        }
    }
}

/// A range of the text (end exclusive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First character.
    pub start: Pos,
    /// After the last character.
    pub end: Pos,
}

/// What a node holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// A scalar as written (block scalars and quoted ones are not `plain`:
    /// they are always text).
    Scalar {
        /// The text after unquoting/unfolding.
        text: String,
        /// Written without quotes, so subject to YAML's core schema
        /// (`true`, `12`, `~`).
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order.
    Map(Vec<Entry>),
}

/// One mapping entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The key (scalar keys only).
    pub key: String,
    /// Where the key is.
    pub key_span: Span,
    /// The value.
    pub value: Node,
}

/// A value with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The content.
    pub kind: Kind,
    /// Where it is.
    pub span: Span,
}

/// A problem found while reading a document, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The value it is about.
    pub path: Path,
    /// Where, when known.
    pub pos: Option<Pos>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// A piece of the value's text to point at (inside that value only).
    pub needle: Option<String>,
}

impl Problem {
    /// A problem about the value at `path` (positioned later from the tree).
    pub fn new(path: Path, message: impl Into<String>) -> Self {
        Self {
            path,
            pos: None,
            message: message.into(),
            hint: None,
            needle: None,
        }
    }
    /// With a hint.
    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    /// With an optional hint.
    pub fn hint_opt(mut self, h: Option<String>) -> Self {
        self.hint = h;
        self
    }
    /// Pointing at this text inside the value.
    pub fn needle(mut self, n: Option<String>) -> Self {
        self.needle = n;
        self
    }
}

/// A parsed document.
#[derive(Debug, Default)]
pub struct Document {
    /// The root value; `None` for an empty document (or one that could not
    /// be parsed).
    pub root: Option<Node>,
    /// Problems found (a syntax error leaves `root` empty).
    pub problems: Vec<Problem>,
}

/// Deepest nesting accepted (a config is a few levels deep; this bounds
/// the recursion of the checks that walk the tree).
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to (aliases included).
pub const MAX_NODES: usize = 200_000;

enum Open {
    Seq(Vec<Node>, Span, usize),
    Map(Vec<Entry>, Span, usize, Option<(String, Span)>),
}

/// Parses one YAML document.
pub fn parse(text: &str) -> Document {
    let mut doc = Document::default();
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut nodes = 0usize;
    let mut documents = 0usize;
    let mut root: Option<Node> = None;
    let problem =
        |doc: &mut Document, path: Path, pos: Pos, message: String, hint: Option<&str>| {
            doc.problems.push(Problem {
                path,
                pos: Some(pos),
                message,
                hint: hint.map(str::to_string),
                needle: None,
            })
        };
    let path_of = |stack: &[Open]| -> Path {
        let mut p = Path::root();
        for o in stack {
            p = match o {
                Open::Seq(items, ..) => p.index(items.len()),
                Open::Map(_, _, _, Some((k, _))) => p.key(k.clone()),
                Open::Map(..) => p,
            };
        }
        p
    };
    for ev in Parser::new_from_str(text) {
        let (ev, span) = match ev {
            Ok(e) => e,
            Err(e) => {
                let pos = Pos::from_marker(*e.marker());
                problem(
                    &mut doc,
                    path_of(&stack),
                    pos,
                    format!("YAML syntax error: {}", e.info()),
                    None,
                );
                doc.root = None;
                return doc;
            }
        };
        let span = Span {
            start: Pos::from_marker(span.start),
            end: Pos::from_marker(span.end),
        };
        let (node, anchor) = match ev {
            Event::StreamStart | Event::StreamEnd | Event::Nothing | Event::DocumentEnd => continue,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    problem(
                        &mut doc,
                        Path::root(),
                        span.start,
                        "a second YAML document (`---`) in the file".into(),
                        Some("one document per file: remove the `---` line and what follows, or merge them"),
                    );
                    doc.root = root;
                    return doc;
                }
                continue;
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(n) => {
                    let size = count(n);
                    nodes += size;
                    if nodes > MAX_NODES {
                        problem(
                            &mut doc,
                            path_of(&stack),
                            span.start,
                            format!("the document expands to more than {MAX_NODES} values"),
                            Some("aliases (*name) copy what they point at: use fewer"),
                        );
                        return doc;
                    }
                    let mut n = n.clone();
                    n.span = span;
                    (Some(n), 0)
                }
                None => {
                    problem(
                        &mut doc,
                        path_of(&stack),
                        span.start,
                        "unknown alias".into(),
                        None,
                    );
                    (None, 0)
                }
            },
            Event::Scalar(text, style, anchor, tag) => {
                if let Some(t) = tag {
                    if !core_str_tag(&t.handle, &t.suffix) {
                        problem(
                            &mut doc,
                            path_of(&stack),
                            span.start,
                            format!("YAML tags ({}{}) are not supported", t.handle, t.suffix),
                            Some("remove the tag; quote the value to make it text"),
                        );
                    }
                }
                let plain = matches!(style, ScalarStyle::Plain);
                (
                    Some(Node {
                        kind: Kind::Scalar {
                            text: text.into_owned(),
                            plain,
                        },
                        span,
                    }),
                    anchor,
                )
            }
            Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                if let Some(t) = tag {
                    problem(
                        &mut doc,
                        path_of(&stack),
                        span.start,
                        format!("YAML tags ({}{}) are not supported", t.handle, t.suffix),
                        Some("remove the tag"),
                    );
                }
                if stack.len() >= MAX_DEPTH {
                    problem(
                        &mut doc,
                        path_of(&stack),
                        span.start,
                        format!("nested deeper than {MAX_DEPTH} levels"),
                        None,
                    );
                    return doc;
                }
                if matches!(ev, Event::SequenceStart(..)) {
                    stack.push(Open::Seq(Vec::new(), span, anchor));
                } else {
                    stack.push(Open::Map(Vec::new(), span, anchor, None));
                }
                continue;
            }
            Event::SequenceEnd => match stack.pop() {
                Some(Open::Seq(items, mut s, anchor)) => {
                    s.end = span.end.max(last_end(&items).unwrap_or(s.end));
                    (
                        Some(Node {
                            kind: Kind::Seq(items),
                            span: s,
                        }),
                        anchor,
                    )
                }
                _ => continue,
            },
            Event::MappingEnd => match stack.pop() {
                Some(Open::Map(entries, mut s, anchor, _)) => {
                    s.end = span
                        .end
                        .max(entries.last().map_or(s.end, |e| e.value.span.end));
                    (
                        Some(Node {
                            kind: Kind::Map(entries),
                            span: s,
                        }),
                        anchor,
                    )
                }
                _ => continue,
            },
        };
        nodes += 1;
        if nodes > MAX_NODES {
            problem(
                &mut doc,
                path_of(&stack),
                span.start,
                format!("the document has more than {MAX_NODES} values"),
                None,
            );
            return doc;
        }
        let Some(node) = node else { continue };
        if anchor != 0 {
            anchors.insert(anchor, node.clone());
        }
        // Attach the finished node to its parent.
        let at = path_of(&stack);
        match stack.last_mut() {
            None => root = Some(node),
            Some(Open::Seq(items, ..)) => items.push(node),
            Some(Open::Map(entries, _, _, pending)) => match pending.take() {
                None => match node.kind {
                    Kind::Scalar { text, .. } => *pending = Some((text, node.span)),
                    _ => {
                        problem(
                            &mut doc,
                            at,
                            node.span.start,
                            "a mapping key must be a plain value, not a list or a mapping".into(),
                            None,
                        );
                        *pending = Some((String::new(), node.span));
                    }
                },
                Some((key, key_span)) => {
                    if entries.iter().any(|e| e.key == key) {
                        problem(
                            &mut doc,
                            at,
                            key_span.start,
                            format!("`{key}` is given twice"),
                            Some("keep one of them"),
                        );
                    } else {
                        entries.push(Entry {
                            key,
                            key_span,
                            value: node,
                        });
                    }
                }
            },
        }
    }
    doc.root = root;
    doc
}

fn last_end(items: &[Node]) -> Option<Pos> {
    items.last().map(|n| n.span.end)
}

fn core_str_tag(handle: &str, suffix: &str) -> bool {
    (handle == "!!" || handle == "tag:yaml.org,2002:") && suffix == "str"
}

fn count(n: &Node) -> usize {
    match &n.kind {
        Kind::Scalar { .. } => 1,
        Kind::Seq(items) => 1 + items.iter().map(count).sum::<usize>(),
        Kind::Map(entries) => 1 + entries.iter().map(|e| 1 + count(&e.value)).sum::<usize>(),
    }
}

/// A plain scalar that YAML's core schema reads as null.
pub fn is_null(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

impl Node {
    /// An empty mapping at the start of the text (an empty document).
    pub fn empty_map() -> Self {
        let start = Pos {
            line: 1,
            col: 1,
            index: 0,
        };
        Node {
            kind: Kind::Map(Vec::new()),
            span: Span { start, end: start },
        }
    }

    /// Whether this is a plain null (`~`, `null`, nothing).
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if is_null(text))
    }

    /// The entry of a mapping by key.
    pub fn entry(&self, key: &str) -> Option<&Entry> {
        match &self.kind {
            Kind::Map(entries) => entries.iter().find(|e| e.key == key),
            _ => None,
        }
    }

    /// The node at `path`, if it exists.
    pub fn get(&self, path: &Path) -> Option<&Node> {
        let mut n = self;
        for s in path.segments() {
            n = match (s, &n.kind) {
                (Seg::Key(k), Kind::Map(_)) => &n.entry(k)?.value,
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(n)
    }

    /// Where to point for a problem about `path`: a scalar's value, a
    /// container's key (`ami:`), or, for a value that is not written, the
    /// key of its nearest written ancestor.
    pub fn locate(&self, path: &Path) -> Pos {
        let mut n = self;
        let mut key: Option<Span> = None;
        for s in path.segments() {
            let next = match (s, &n.kind) {
                (Seg::Key(k), Kind::Map(_)) => n.entry(k).map(|e| (&e.value, Some(e.key_span))),
                (Seg::Index(i), Kind::Seq(items)) => items.get(*i).map(|c| (c, None)),
                _ => None,
            };
            match next {
                Some((c, k)) => {
                    n = c;
                    key = k;
                }
                // Not written: the nearest written ancestor.
                None => return key.map_or(n.span.start, |k| k.start),
            }
        }
        match (&n.kind, key) {
            (Kind::Scalar { .. }, _) => n.span.start,
            (_, Some(k)) => k.start,
            (_, None) => n.span.start,
        }
    }

    /// The position of `needle` inside the value at `path` (searched only
    /// in the source text of that value's scalars, never elsewhere in the
    /// file), else [`locate`](Self::locate).
    pub fn locate_in(&self, path: &Path, needle: Option<&str>, text: &str) -> Pos {
        let at = self.locate(path);
        match (needle.filter(|n| !n.is_empty()), self.get(path)) {
            (Some(needle), Some(n)) => n.find_in_scalars(needle, text).unwrap_or(at),
            _ => at,
        }
    }

    fn find_in_scalars(&self, needle: &str, text: &str) -> Option<Pos> {
        match &self.kind {
            Kind::Scalar { .. } => {
                let src = char_slice(text, self.span.start.index, self.span.end.index);
                src.find(needle)
                    .map(|i| advance(self.span.start, &src[..i]))
            }
            Kind::Seq(items) => items.iter().find_map(|c| c.find_in_scalars(needle, text)),
            Kind::Map(entries) => entries.iter().find_map(|e| {
                (e.key.contains(needle))
                    .then(|| {
                        let src = char_slice(text, e.key_span.start.index, e.key_span.end.index);
                        src.find(needle)
                            .map(|i| advance(e.key_span.start, &src[..i]))
                    })
                    .flatten()
                    .or_else(|| e.value.find_in_scalars(needle, text))
            }),
        }
    }
}

/// The text between two character indices.
fn char_slice(text: &str, from: usize, to: usize) -> Cow<'_, str> {
    let mut it = text.char_indices().map(|(b, _)| b).chain([text.len()]);
    let start = it.nth(from);
    let end = it.nth(to.saturating_sub(from).saturating_sub(1));
    match (start, end) {
        (Some(s), Some(e)) if s <= e => Cow::Borrowed(&text[s..e]),
        (Some(s), None) => Cow::Borrowed(&text[s..]),
        _ => Cow::Borrowed(""),
    }
}

/// `start` moved over `s`.
fn advance(mut p: Pos, s: &str) -> Pos {
    for c in s.chars() {
        p.index += 1;
        if c == '\n' {
            p.line += 1;
            p.col = 1;
        } else {
            p.col += 1;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: Pos) -> (usize, usize) {
        (p.line, p.col)
    }

    #[test]
    fn spans_of_keys_and_values() {
        let text = "# a comment: pbx\npbx:\n  - id: main   # id: other\n    ami: { host: h, port: 5038 }\nrules: [ {name: a}, {name: \"b\"} ]\n";
        let doc = parse(text);
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        let root = doc.root.unwrap();
        assert_eq!(pos(root.locate(&Path::parse("pbx[0].id"))), (3, 9));
        assert_eq!(pos(root.locate(&Path::parse("pbx[0].ami"))), (4, 5));
        assert_eq!(pos(root.locate(&Path::parse("pbx[0].ami.port"))), (4, 27));
        // Not written: the nearest written ancestor's key.
        assert_eq!(pos(root.locate(&Path::parse("pbx[0].ami.secret"))), (4, 5));
        assert_eq!(pos(root.locate(&Path::parse("rules[1].name"))), (5, 28));
        let Some(Node {
            kind: Kind::Scalar { plain, .. },
            ..
        }) = root.get(&Path::parse("rules[1].name"))
        else {
            panic!()
        };
        assert!(!plain);
        assert_eq!(
            pos(root.locate_in(&Path::parse("pbx[0].ami.host"), Some("h"), text)),
            (4, 18)
        );
    }

    #[test]
    fn problems_are_reported_with_positions() {
        let doc = parse("a: 1\nb: 2\na: 3\n");
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(pos(doc.problems[0].pos.unwrap()), (3, 1));
        let doc = parse("a: [1, 2\nb: 3\n");
        assert!(doc.root.is_none());
        assert!(doc.problems[0].message.starts_with("YAML syntax error"));
        let doc = parse("a: !!binary aGVsbG8=\n");
        assert!(doc.problems[0].message.contains("tags"));
        let doc = parse("a: 1\n---\nb: 2\n");
        assert!(doc.problems[0].message.contains("second YAML document"));
        assert!(parse("").root.is_none());
        assert!(parse("# only a comment\n").root.is_none());
    }

    #[test]
    fn aliases_are_copies_and_bounded() {
        let doc = parse("d: &d { x: 1 }\ne: *d\n");
        let root = doc.root.unwrap();
        assert_eq!(
            root.get(&Path::parse("e.x")).map(|n| &n.kind),
            Some(&Kind::Scalar {
                text: "1".into(),
                plain: true
            })
        );
        let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            bomb.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let doc = parse(&bomb);
        assert!(doc.problems.iter().any(|p| p.message.contains("expands")));
        let deep = "[".repeat(10_000);
        let doc = parse(&deep);
        assert!(!doc.problems.is_empty());
    }
}
