//! Where a value is in a document: `pbx[0].ami.secret`, `targets.crm.headers.Authorization`.

use std::fmt;

/// One step of a [`Path`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index (0-based).
    Index(usize),
}

/// The location of a value as keys and indices from the document root.
///
/// Displayed as `pbx[0].ami.secret`; a key that is not made of letters,
/// digits, `_` and `-` only is shown as written when it is the last step or
/// has no `.`, `[` or `]` (`push.teams.bad name.token`), else quoted
/// (`headers["a.b"]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Path(Vec<Seg>);

impl Path {
    /// The document root.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path followed by a key.
    pub fn key(&self, k: impl Into<String>) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Key(k.into()));
        p
    }

    /// This path followed by an index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Seg::Index(i));
        p
    }

    /// This path followed by every step of `rest`.
    pub fn join(&self, rest: &Path) -> Self {
        let mut p = self.clone();
        p.0.extend(rest.0.iter().cloned());
        p
    }

    /// The steps.
    pub fn segments(&self) -> &[Seg] {
        &self.0
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The path one step up (the root stays the root).
    pub fn parent(&self) -> Self {
        let mut p = self.clone();
        p.0.pop();
        p
    }

    /// Whether `prefix` is this path or one of its ancestors.
    pub fn starts_with(&self, prefix: &Path) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// Replaces the first `n` steps with `with`.
    pub fn rebase(&self, n: usize, with: &Path) -> Self {
        let mut p = with.clone();
        p.0.extend(self.0.iter().skip(n).cloned());
        p
    }

    /// Parses the displayed form (`rules[2].json.a[0]`, `headers["X Y"]`).
    /// Keys holding `.` or `[` must be quoted to come back as one step.
    pub fn parse(s: &str) -> Self {
        let mut segs = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        let mut key = String::new();
        let flush = |key: &mut String, segs: &mut Vec<Seg>| {
            if !key.is_empty() {
                segs.push(Seg::Key(std::mem::take(key)));
            }
        };
        while i < b.len() {
            match b[i] {
                b'.' => {
                    flush(&mut key, &mut segs);
                    i += 1;
                }
                b'[' if b.get(i + 1) == Some(&b'"') => {
                    flush(&mut key, &mut segs);
                    let mut j = i + 2;
                    let mut k = String::new();
                    let chars: Vec<char> = s[j..].chars().collect();
                    let mut c = 0;
                    while c < chars.len() && chars[c] != '"' {
                        if chars[c] == '\\' && c + 1 < chars.len() {
                            c += 1;
                            k.push(match chars[c] {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                o => o,
                            });
                        } else {
                            k.push(chars[c]);
                        }
                        c += 1;
                    }
                    j += chars[..c.min(chars.len())]
                        .iter()
                        .map(|ch| ch.len_utf8())
                        .sum::<usize>();
                    segs.push(Seg::Key(k));
                    // Skip `"]`.
                    i = (j + 2).min(b.len());
                }
                b'[' => {
                    flush(&mut key, &mut segs);
                    let end = s[i..].find(']').map_or(b.len(), |e| i + e);
                    match s[i + 1..end].parse::<usize>() {
                        Ok(n) => segs.push(Seg::Index(n)),
                        Err(_) => segs.push(Seg::Key(s[i + 1..end].to_string())),
                    }
                    i = (end + 1).min(b.len());
                }
                _ => {
                    let ch = s[i..].chars().next().unwrap_or(' ');
                    key.push(ch);
                    i += ch.len_utf8();
                }
            }
        }
        flush(&mut key, &mut segs);
        Self(segs)
    }
}

fn plain(k: &str) -> bool {
    !k.is_empty() && !k.contains(['.', '[', ']', '"'])
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            match s {
                Seg::Key(k) if plain(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Key(k) => write!(f, "[{k:?}]")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

impl From<&str> for Path {
    fn from(s: &str) -> Self {
        Path::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        for s in [
            "pbx[0].ami.secret",
            "targets.crm.headers.Bad Header",
            "rules[2].json.a[0].b",
            "rules[0].headers[\"a.b\"]",
            "push.teams.bad name",
            "",
        ] {
            assert_eq!(Path::parse(s).to_string(), s, "{s}");
        }
        let p = Path::root().key("targets").key("my.crm").key("timeout");
        assert_eq!(p.to_string(), "targets[\"my.crm\"].timeout");
        assert_eq!(Path::parse(&p.to_string()), p);
        assert!(p.starts_with(&Path::parse("targets")));
        assert!(!Path::parse("rules[1]").starts_with(&Path::parse("rules[1].url")));
        assert_eq!(
            Path::parse("rules[5].url")
                .rebase(2, &Path::parse("rules[1]"))
                .to_string(),
            "rules[1].url"
        );
    }
}
