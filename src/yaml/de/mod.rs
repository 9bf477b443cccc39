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
//!
//! One concept a file: the recovering driver here, the deserializer of one
//! node (and its sequence, mapping and enum access) in `node`, the core
//! schema's reading of a plain scalar in `scalar`.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::de::{self, DeserializeOwned};

use super::{Node, Path, Pos, Problem};

mod node;
mod scalar;

use node::NodeDe;

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
