//! Deserializing a [`Node`] tree into `#[derive(Deserialize)]` structs,
//! reporting every problem instead of the first.
//!
//! serde stops at the first error. To report all of them, [`from_node`]
//! runs the derived code again after each error with the offending value
//! replaced by a placeholder (it is *poisoned*), until a run succeeds:
//!
//! - a key a struct does not have (`auht:`) is reported with the closest
//!   known key and skipped; it never stops the run;
//! - a value of the wrong type (`port: abc`) is reported and poisoned;
//! - a required key that is missing is reported at its mapping and filled
//!   with a placeholder.
//!
//! A placeholder is the "zero" of whatever type serde asks for (`""`, `0`,
//! `false`, `None`, an empty list, a struct of placeholders). The poisoned
//! paths come back with the value so that later checks stay quiet there
//! (no follow-on errors: a bad `port` does not also give "port 0 is not a
//! port").
//!
//! Scalars follow YAML 1.2's core schema for self-describing types
//! (`deserialize_any`: `12` is a number, `true` a bool, `~` null, quoted
//! values text) with one exception that keeps what was written: a plain
//! integer written with a leading `0` or `+` (`0261`, `+5215512345678`) is
//! text. A field that asks for text accepts any scalar as written.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    Unexpected, VariantAccess, Visitor,
};

use super::{is_null, Kind, Node, Path, Pos, Problem};

/// Deserialization runs given up on after this many problems.
const MAX_RUNS: usize = 500;

/// What [`from_node`] found.
#[derive(Debug)]
pub struct Recovered<T> {
    /// The value (placeholders where there were problems); `None` when it
    /// could not be built at all.
    pub value: Option<T>,
    /// Every problem, in the order found.
    pub problems: Vec<Problem>,
    /// Values that were replaced by placeholders.
    pub poisoned: Vec<Path>,
}

impl<T> Recovered<T> {
    /// Whether `path` is, or is inside, a poisoned value.
    pub fn is_poisoned(&self, path: &Path) -> bool {
        self.poisoned.iter().any(|p| path.starts_with(p))
    }
}

/// Parses and deserializes a whole text; any problem is an error (tests,
/// small helpers).
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Vec<Problem>> {
    let doc = super::parse(text);
    if !doc.problems.is_empty() {
        return Err(doc.problems);
    }
    let root = doc.root.unwrap_or_else(Node::empty_map);
    let r = from_node::<T>(&root);
    match r.value {
        Some(v) if r.problems.is_empty() => Ok(v),
        _ => Err(r.problems),
    }
}

/// Deserializes `root`, collecting every problem (see the module docs).
pub fn from_node<T: DeserializeOwned>(root: &Node) -> Recovered<T> {
    let mut ctx = Ctx::default();
    let mut problems: Vec<Problem> = Vec::new();
    let mut seen: HashSet<(Path, String)> = HashSet::new();
    let mut push = |problems: &mut Vec<Problem>, p: Problem| {
        if seen.insert((p.path.clone(), p.message.clone())) {
            problems.push(p);
        }
    };
    for _ in 0..MAX_RUNS {
        let result = T::deserialize(NodeDe {
            node: Some(root),
            path: Path::root(),
            ctx: &ctx,
        });
        for p in ctx.soft.take() {
            push(&mut problems, p);
        }
        let e = match result {
            Ok(v) => {
                return Recovered {
                    value: Some(v),
                    problems,
                    poisoned: ctx.poisoned.into_iter().collect(),
                }
            }
            Err(e) => e,
        };
        let path = e.path.clone().unwrap_or_default();
        if e.from_placeholder {
            // The placeholder did not fit the type: give up one level up.
            if path.is_root() {
                break;
            }
            ctx.poisoned.insert(path.parent());
            continue;
        }
        match e.kind {
            ErrKind::Missing(field) => {
                push(
                    &mut problems,
                    Problem {
                        pos: Some(root.locate(&path)),
                        path: path.clone(),
                        message: format!("missing `{field}`"),
                        hint: None,
                        needle: None,
                    },
                );
                let injected = ctx.injected.entry(path.clone()).or_default();
                if injected.contains(&field) {
                    break;
                }
                injected.push(field);
                ctx.poisoned.insert(path.key(field));
            }
            ErrKind::Message(m) => {
                push(
                    &mut problems,
                    Problem {
                        pos: Some(e.pos.unwrap_or_else(|| root.locate(&path))),
                        path: path.clone(),
                        message: m,
                        hint: None,
                        needle: None,
                    },
                );
                if path.is_root() || !ctx.poisoned.insert(path) {
                    break;
                }
            }
        }
    }
    Recovered {
        value: None,
        problems,
        poisoned: ctx.poisoned.into_iter().collect(),
    }
}

#[derive(Default)]
struct Ctx {
    poisoned: HashSet<Path>,
    /// Mapping → missing required keys to fill with placeholders.
    injected: HashMap<Path, Vec<&'static str>>,
    /// Problems that do not stop the run (unknown keys).
    soft: RefCell<Vec<Problem>>,
}

#[derive(Debug)]
enum ErrKind {
    Message(String),
    Missing(&'static str),
}

/// A deserialization problem, tagged with the value it arose at.
#[derive(Debug)]
pub struct Error {
    kind: ErrKind,
    path: Option<Path>,
    pos: Option<Pos>,
    from_placeholder: bool,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrKind::Message(m) => f.write_str(m),
            ErrKind::Missing(k) => write!(f, "missing `{k}`"),
        }
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        Error {
            kind: ErrKind::Message(msg.to_string()),
            path: None,
            pos: None,
            from_placeholder: false,
        }
    }
    fn missing_field(field: &'static str) -> Self {
        Error {
            kind: ErrKind::Missing(field),
            path: None,
            pos: None,
            from_placeholder: false,
        }
    }
}

/// The deserializer of one node; `node: None` is a placeholder.
struct NodeDe<'a> {
    node: Option<&'a Node>,
    path: Path,
    ctx: &'a Ctx,
}

impl<'a> NodeDe<'a> {
    fn child(&self, node: &'a Node, path: Path) -> NodeDe<'a> {
        let poisoned = self.ctx.poisoned.contains(&path);
        NodeDe {
            node: (!poisoned).then_some(node),
            path,
            ctx: self.ctx,
        }
    }

    fn placeholder(&self, path: Path) -> NodeDe<'a> {
        NodeDe {
            node: None,
            path,
            ctx: self.ctx,
        }
    }

    fn tag(&self, mut e: Error) -> Error {
        if e.path.is_none() {
            e.path = Some(self.path.clone());
            e.pos = self.node.map(|n| n.span.start);
            e.from_placeholder = self.node.is_none();
        }
        e
    }

    fn scalar(&self) -> Option<(&'a str, bool)> {
        match &self.node?.kind {
            Kind::Scalar { text, plain } => Some((text.as_str(), *plain)),
            _ => None,
        }
    }

    fn unexpected(&self) -> Unexpected<'a> {
        match self.node.map(|n| &n.kind) {
            Some(Kind::Scalar { text, plain: true }) if is_null(text) => Unexpected::Unit,
            Some(Kind::Scalar { text, .. }) => Unexpected::Str(text),
            Some(Kind::Seq(_)) => Unexpected::Seq,
            Some(Kind::Map(_)) => Unexpected::Map,
            None => Unexpected::Other("nothing"),
        }
    }

    fn is_null(&self) -> bool {
        self.node.is_some_and(Node::is_null)
    }
}

/// A plain scalar as the core schema reads it.
enum Resolved<'a> {
    Null,
    Bool(bool),
    U(u64),
    I(i64),
    F(f64),
    Str(&'a str),
}

fn resolve(text: &str, plain: bool) -> Resolved<'_> {
    if !plain {
        return Resolved::Str(text);
    }
    if is_null(text) {
        return Resolved::Null;
    }
    match text {
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::F(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::F(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::F(f64::NAN),
        _ => {}
    }
    if let Some(n) = parse_int(text) {
        return n;
    }
    if is_float(text) {
        if let Ok(f) = text.parse::<f64>() {
            return Resolved::F(f);
        }
    }
    Resolved::Str(text)
}

fn parse_int(text: &str) -> Option<Resolved<'_>> {
    let (neg, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (radix, digits) = if let Some(h) = digits.strip_prefix("0x") {
        (16, h)
    } else if let Some(o) = digits.strip_prefix("0o") {
        (8, o)
    } else {
        (10, digits)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let u = u64::from_str_radix(digits, radix).ok()?;
    Some(if neg {
        Resolved::I(0i64.checked_sub_unsigned(u)?)
    } else {
        Resolved::U(u)
    })
}

fn is_float(t: &str) -> bool {
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mant, exp) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mant_ok = match mant.split_once('.') {
        Some((a, b)) => {
            (!a.is_empty() || !b.is_empty())
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !mant.is_empty() && mant.bytes().all(|c| c.is_ascii_digit()),
    };
    let exp_ok = exp.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit())
    });
    mant_ok && exp_ok
}

/// Written with a leading `0` or `+` (`0261`, `+52155`): kept as text by
/// `deserialize_any`.
fn keeps_text(text: &str) -> bool {
    let d = text.strip_prefix('-').unwrap_or(text);
    text.starts_with('+')
        || (d.len() > 1 && d.starts_with('0') && !d[1..].starts_with(['.', 'e', 'E']))
}

macro_rules! int_method {
    ($name:ident, $visit:ident) => {
        fn $name<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let r = match self.node {
                None => visitor.visit_u64(0),
                Some(_) => match self.scalar().map(|(t, _)| resolve(t.trim(), true)) {
                    Some(Resolved::U(u)) => visitor.visit_u64(u),
                    Some(Resolved::I(i)) => visitor.visit_i64(i),
                    _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
                },
            };
            r.map_err(|e| self.tag(e))
        }
    };
}

impl<'de, 'a> de::Deserializer<'de> for NodeDe<'a> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node.map(|n| &n.kind) {
            None => visitor.visit_str(""),
            Some(Kind::Scalar { text, plain }) => match resolve(text, *plain) {
                _ if *plain && keeps_text(text) && parse_int(text).is_some() => {
                    visitor.visit_str(text)
                }
                Resolved::Null => visitor.visit_unit(),
                Resolved::Bool(b) => visitor.visit_bool(b),
                Resolved::U(u) => visitor.visit_u64(u),
                Resolved::I(i) => visitor.visit_i64(i),
                Resolved::F(f) => visitor.visit_f64(f),
                Resolved::Str(s) => visitor.visit_str(s),
            },
            Some(Kind::Seq(_)) => return self.deserialize_seq(visitor),
            Some(Kind::Map(_)) => return self.deserialize_map(visitor),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_bool(false),
            Some(_) => match self.scalar().map(|(t, p)| resolve(t, p)) {
                Some(Resolved::Bool(b)) => visitor.visit_bool(b),
                _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    int_method!(deserialize_i8, visit_i64);
    int_method!(deserialize_i16, visit_i64);
    int_method!(deserialize_i32, visit_i64);
    int_method!(deserialize_i64, visit_i64);
    int_method!(deserialize_u8, visit_u64);
    int_method!(deserialize_u16, visit_u64);
    int_method!(deserialize_u32, visit_u64);
    int_method!(deserialize_u64, visit_u64);

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_f64(0.0),
            Some(_) => match self.scalar().map(|(t, _)| resolve(t.trim(), true)) {
                Some(Resolved::U(u)) => visitor.visit_f64(u as f64),
                Some(Resolved::I(i)) => visitor.visit_f64(i as f64),
                Some(Resolved::F(f)) => visitor.visit_f64(f),
                _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.scalar() {
            _ if self.node.is_none() => visitor.visit_char(' '),
            Some((t, _)) if t.chars().count() == 1 => {
                visitor.visit_char(t.chars().next().unwrap_or(' '))
            }
            _ => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = match self.node {
            None => visitor.visit_str(""),
            Some(_) if self.is_null() => visitor.visit_str(""),
            Some(_) => match self.scalar() {
                Some((t, _)) => visitor.visit_str(t),
                None => Err(de::Error::invalid_type(self.unexpected(), &visitor)),
            },
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_none() || self.is_null() {
            visitor.visit_none().map_err(|e| self.tag(e))
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let r = if self.node.is_none() || self.is_null() {
            visitor.visit_unit()
        } else {
            Err(de::Error::invalid_type(self.unexpected(), &visitor))
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: &[Node] = match self.node.map(|n| &n.kind) {
            Some(Kind::Seq(items)) => items,
            None => &[],
            Some(_) if self.is_null() => &[],
            Some(_) => {
                let e = de::Error::invalid_type(self.unexpected(), &visitor);
                return Err(self.tag(e));
            }
        };
        let r = visitor.visit_seq(Seq {
            parent: &self,
            items,
            next: 0,
            placeholders: 0,
        });
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        if self.node.is_none() {
            let r = visitor.visit_seq(Seq {
                parent: &self,
                items: &[],
                next: 0,
                placeholders: len,
            });
            return r.map_err(|e| self.tag(e));
        }
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.map(None, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.map(Some(fields), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let r = match self.node.map(|n| &n.kind) {
            None => visitor.visit_enum(Enum {
                variant: variants.first().copied().unwrap_or(""),
                value: None,
                de: &self,
            }),
            Some(Kind::Scalar { text, .. }) => visitor.visit_enum(Enum {
                variant: text,
                value: None,
                de: &self,
            }),
            Some(Kind::Map(entries)) if entries.len() == 1 => visitor.visit_enum(Enum {
                variant: &entries[0].key,
                value: Some(&entries[0].value),
                de: &self,
            }),
            Some(_) => Err(de::Error::invalid_type(
                self.unexpected(),
                &"one of the documented values",
            )),
        };
        r.map_err(|e| self.tag(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

impl<'a> NodeDe<'a> {
    fn map<'de, V: Visitor<'de>>(
        self,
        fields: Option<&'static [&'static str]>,
        visitor: V,
    ) -> Result<V::Value, Error> {
        let entries: &[super::Entry] = match self.node.map(|n| &n.kind) {
            Some(Kind::Map(entries)) => entries,
            Some(_) if self.is_null() => &[],
            None => &[],
            Some(_) => {
                let e = de::Error::invalid_type(self.unexpected(), &visitor);
                return Err(self.tag(e));
            }
        };
        // A placeholder struct is a struct of placeholders.
        let mut extra: Vec<&'static str> = match (self.node, fields) {
            (None, Some(f)) => f.to_vec(),
            _ => Vec::new(),
        };
        if let Some(inj) = self.ctx.injected.get(&self.path) {
            extra.extend(inj.iter().filter(|k| !entries.iter().any(|e| e.key == **k)));
        }
        if let Some(fields) = fields {
            for e in entries {
                if !fields.contains(&e.key.as_str()) {
                    self.ctx
                        .soft
                        .borrow_mut()
                        .push(unknown_key(&self.path, e, fields));
                }
            }
        }
        let r = visitor.visit_map(Map {
            parent: &self,
            entries,
            fields,
            next: 0,
            extra,
            value: None,
        });
        r.map_err(|e| self.tag(e))
    }
}

fn unknown_key(at: &Path, e: &super::Entry, fields: &[&str]) -> Problem {
    let near = fields
        .iter()
        .map(|f| (strsim::damerau_levenshtein(f, &e.key), *f))
        .filter(|(d, f)| *d <= 2.max(f.len() / 3))
        .min();
    let mut known: Vec<&str> = fields.to_vec();
    known.sort_unstable();
    Problem {
        path: at.key(e.key.clone()),
        pos: Some(e.key_span.start),
        message: match near {
            Some((_, f)) => format!("unknown key `{}` (did you mean `{f}`?)", e.key),
            None => format!("unknown key `{}`", e.key),
        },
        hint: Some(format!("known keys here: {}", known.join(", "))),
        needle: None,
    }
}

struct Seq<'p, 'a> {
    parent: &'p NodeDe<'a>,
    items: &'a [Node],
    next: usize,
    placeholders: usize,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = Error;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let i = self.next;
        self.next += 1;
        if let Some(n) = self.items.get(i) {
            let de = self.parent.child(n, self.parent.path.index(i));
            return seed.deserialize(de).map(Some);
        }
        if i < self.placeholders {
            let de = self.parent.placeholder(self.parent.path.index(i));
            return seed.deserialize(de).map(Some);
        }
        Ok(None)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len().max(self.placeholders))
    }
}

struct Map<'p, 'a> {
    parent: &'p NodeDe<'a>,
    entries: &'a [super::Entry],
    fields: Option<&'static [&'static str]>,
    next: usize,
    extra: Vec<&'static str>,
    value: Option<NodeDe<'a>>,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = Error;
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        while let Some(e) = self.entries.get(self.next) {
            self.next += 1;
            if self.fields.is_some_and(|f| !f.contains(&e.key.as_str())) {
                continue;
            }
            let path = self.parent.path.key(e.key.clone());
            self.value = Some(self.parent.child(&e.value, path.clone()));
            let key = Node {
                kind: Kind::Scalar {
                    text: e.key.clone(),
                    plain: true,
                },
                span: e.key_span,
            };
            let kd = NodeDe {
                node: Some(&key),
                path: path.clone(),
                ctx: self.parent.ctx,
            };
            return seed.deserialize(kd).map(Some);
        }
        if let Some(k) = self.extra.pop() {
            self.value = Some(self.parent.placeholder(self.parent.path.key(k)));
            return seed.deserialize(k.into_deserializer()).map(Some);
        }
        Ok(None)
    }
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(de) => seed.deserialize(de),
            None => Err(de::Error::custom("value without a key")),
        }
    }
}

struct Enum<'p, 'a> {
    variant: &'a str,
    value: Option<&'a Node>,
    de: &'p NodeDe<'a>,
}

impl<'de, 'p, 'a> EnumAccess<'de> for Enum<'p, 'a> {
    type Error = Error;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let v = seed.deserialize(self.variant.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for Enum<'_, '_> {
    type Error = Error;
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        seed.deserialize(self.inner())
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self.inner(), len, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_struct(self.inner(), "", fields, visitor)
    }
}

impl<'a> Enum<'_, 'a> {
    fn inner(&self) -> NodeDe<'a> {
        let path = self.de.path.key(self.variant.to_string());
        match self.value {
            Some(n) => self.de.child(n, path),
            None => self.de.placeholder(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Ami {
        host: String,
        #[serde(default = "port")]
        port: u16,
        #[serde(default)]
        secret: Option<String>,
        #[serde(default)]
        ping: Option<f64>,
    }
    fn port() -> u16 {
        5038
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Pbx {
        id: String,
        ami: Ami,
    }

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Top {
        #[serde(default)]
        pbx: Vec<Pbx>,
        #[serde(default)]
        env: Vec<String>,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        any: Option<super::super::Value>,
    }

    fn run(text: &str) -> Recovered<Top> {
        let doc = super::super::parse(text);
        assert!(doc.problems.is_empty(), "{:?}", doc.problems);
        from_node(&doc.root.unwrap())
    }

    fn msgs(r: &Recovered<Top>) -> Vec<String> {
        r.problems
            .iter()
            .map(|p| {
                let pos = p.pos.unwrap();
                format!("{}:{} {}: {}", pos.line, pos.col, p.path, p.message)
            })
            .collect()
    }

    #[test]
    fn a_clean_document() {
        let r = run(
            "pbx:\n  - id: main\n    ami: { host: h, secret: 1234 }\nenv: [A, 12]\nflag: true\n",
        );
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let v = r.value.unwrap();
        assert_eq!(v.pbx[0].ami.port, 5038);
        assert_eq!(v.pbx[0].ami.secret.as_deref(), Some("1234"));
        assert_eq!(v.env, ["A", "12"]);
        assert!(v.flag);
    }

    #[test]
    fn every_problem_is_reported_once_with_its_position() {
        let r = run(concat!(
            "pbx:\n",
            "  - id: main\n",
            "    auht: md5\n",
            "    ami: { host: h, port: abc, pign: 5 }\n",
            "  - id: [x]\n",
            "    ami: { port: 70000 }\n",
            "flag: maybe\n",
            "colour: red\n",
        ));
        let m = msgs(&r);
        let want = [
            "3:5 pbx[0].auht: unknown key `auht`",
            "4:32 pbx[0].ami.pign: unknown key `pign` (did you mean `ping`?)",
            "4:27 pbx[0].ami.port: invalid type: string \"abc\", expected u16",
            "5:9 pbx[1].id: invalid type: sequence, expected a string",
            "6:5 pbx[1].ami: missing `host`",
            "6:18 pbx[1].ami.port: invalid value: integer `70000`, expected u16",
            "7:7 flag: invalid type: string \"maybe\", expected a boolean",
            "8:1 colour: unknown key `colour`",
        ];
        for w in want {
            assert!(m.iter().any(|x| x == w), "missing {w:?} in {m:#?}");
        }
        assert_eq!(m.len(), want.len(), "{m:#?}");
        let v = r.value.as_ref().expect("a value with placeholders");
        assert_eq!(v.pbx.len(), 2);
        assert!(r.is_poisoned(&Path::parse("pbx[0].ami.port")));
        assert!(r.is_poisoned(&Path::parse("pbx[1].ami.host")));
        assert!(!r.is_poisoned(&Path::parse("pbx[0].id")));
    }

    #[test]
    fn scalars_follow_the_core_schema_but_keep_leading_zeros() {
        let r = run("any: [1, -2, 1.5, true, ~, \"7\", 0261, +5215512345678, 0x1F, text]\n");
        let Some(super::super::Value::Sequence(items)) = r.value.unwrap().any else {
            panic!()
        };
        use super::super::{Number, Value};
        assert_eq!(
            items,
            [
                Value::Number(Number::U(1)),
                Value::Number(Number::I(-2)),
                Value::Number(Number::F(1.5)),
                Value::Bool(true),
                Value::Null,
                Value::String("7".into()),
                Value::String("0261".into()),
                Value::String("+5215512345678".into()),
                Value::String("0x1F".into()),
                Value::String("text".into()),
            ]
        );
    }

    #[test]
    fn wrong_shapes_at_the_top() {
        let doc = super::super::parse("- a\n- b\n");
        let r: Recovered<Top> = from_node(&doc.root.unwrap());
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert!(r.problems[0].message.contains("expected struct Top"));
    }
}
