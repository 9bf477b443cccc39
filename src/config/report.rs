//! Where each problem is: the files of one load, the origin of every
//! merged value, and the collector that turns a section's
//! [`Problem`] (a [`Path`] + message) into a positioned [`ConfigError`].
//!
//! **How a section reports an error.** A section's check (in the module
//! that owns the feature) returns or pushes [`Problem`]s whose `path` is
//! the setting's path from the document root (`targets.crm.rate_limit`,
//! `admin.listen`), optionally with a `needle`, a piece of the value's
//! text to point at inside it. [`Report::error`] finds the file the value
//! came from (included rule-set files are merged) and the line and column
//! from the parser's spans; it drops problems inside values that already
//! failed to parse (no follow-on errors). Nothing searches the file text.

use std::collections::HashMap;
use std::path::PathBuf;

use super::errors::ConfigError;
use crate::yaml::{Node, Path, Pos, Problem, Seg};

/// One file of a load (index 0 is the main file).
#[derive(Debug)]
pub(crate) struct SourceFile {
    /// Its path.
    pub path: PathBuf,
    /// Its text.
    pub text: String,
    /// Its tree (an empty mapping when empty or unparsable).
    pub root: Node,
    /// Values replaced by placeholders (their problems are reported).
    pub poisoned: Vec<Path>,
}

/// Which file and which local path each merged list item or target came from.
#[derive(Debug, Default)]
pub(crate) struct Origins {
    /// Per merged `rules[i]`: (file, index in that file).
    pub rules: Vec<(usize, usize)>,
    /// Per merged `rewrite[i]`.
    pub rewrite: Vec<(usize, usize)>,
    /// Per merged `env[i]`.
    pub env: Vec<(usize, usize)>,
    /// Target name → file.
    pub targets: HashMap<String, usize>,
}

impl Origins {
    /// Adds `n` items of list `which` from `file`.
    pub fn add(list: &mut Vec<(usize, usize)>, file: usize, n: usize) {
        list.extend((0..n).map(|i| (file, i)));
    }

    /// The file and the path in it of a merged path.
    pub fn resolve(&self, p: &Path) -> (usize, Path) {
        let segs = p.segments();
        let list = |name: &str, list: &Vec<(usize, usize)>| -> Option<(usize, Path)> {
            match segs {
                [Seg::Key(k), Seg::Index(i), ..] if k == name => {
                    let (f, local) = *list.get(*i)?;
                    Some((f, p.rebase(2, &Path::root().key(name).index(local))))
                }
                _ => None,
            }
        };
        if let Some(r) = list("rules", &self.rules)
            .or_else(|| list("rewrite", &self.rewrite))
            .or_else(|| list("env", &self.env))
        {
            return r;
        }
        if let [Seg::Key(t), Seg::Key(name), ..] = segs {
            if t == "targets" {
                if let Some(f) = self.targets.get(name) {
                    return (*f, p.clone());
                }
            }
        }
        (0, p.clone())
    }
}

/// Collects the errors and warnings of one load.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub files: Vec<SourceFile>,
    pub origins: Origins,
    errors: Vec<(usize, Pos, ConfigError)>,
    warnings: Vec<(usize, Pos, ConfigError)>,
}

impl Report {
    fn place(&self, file: usize, p: Problem) -> Option<(usize, Pos, ConfigError)> {
        let f = self.files.get(file)?;
        if f.poisoned.iter().any(|x| p.path.starts_with(x)) {
            return None;
        }
        let pos = p
            .pos
            .unwrap_or_else(|| f.root.locate_in(&p.path, p.needle.as_deref(), &f.text));
        let e = ConfigError {
            file: (file > 0).then(|| f.path.clone()),
            path: p.path.to_string(),
            location: Some((pos.line, pos.col)),
            message: p.message,
            hint: p.hint,
        };
        Some((file, pos, e))
    }

    /// A problem in `file` at a path of that file.
    pub fn error_in(&mut self, file: usize, p: Problem) {
        if let Some(e) = self.place(file, p) {
            if !self.errors.iter().any(|x| x.2 == e.2) {
                self.errors.push(e);
            }
        }
    }

    /// A problem at a path of the merged configuration.
    pub fn error(&mut self, mut p: Problem) {
        let (file, local) = self.origins.resolve(&p.path);
        p.path = local;
        self.error_in(file, p);
    }

    /// Whether any error was reported.
    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// The errors and warnings, each sorted by file, then position.
    pub fn finish(mut self) -> (Vec<ConfigError>, Vec<ConfigError>) {
        let sort = |v: &mut Vec<(usize, Pos, ConfigError)>| {
            v.sort_by_key(|a| (a.0, a.1.line, a.1.col));
        };
        sort(&mut self.errors);
        sort(&mut self.warnings);
        (
            self.errors.into_iter().map(|e| e.2).collect(),
            self.warnings.into_iter().map(|e| e.2).collect(),
        )
    }
}
