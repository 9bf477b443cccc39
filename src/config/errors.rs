//! Configuration problems: [`ConfigError`] (one problem, with FILE:LINE:COL)
//! and [`ConfigErrors`] (all of them, for one load).

use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration problem (or warning), with where it is when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file it is in, when not the main config file.
    pub file: Option<PathBuf>,
    /// Dotted path of the setting (`pbx[0].ami.secret`).
    pub path: String,
    /// 1-based line and column in the file, when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl ConfigError {
    /// A problem with no position (about the whole file or the setup).
    pub fn general(message: impl Into<String>, hint: Option<&str>) -> Self {
        Self {
            file: None,
            path: String::new(),
            location: None,
            message: message.into(),
            hint: hint.map(str::to_string),
        }
    }

    /// `FILE:LINE:COL: path: message (hint: …)`, with `main` as the file
    /// when the error is not about an included one.
    pub fn render(&self, main: &Path) -> String {
        let mut out = self.file.as_deref().unwrap_or(main).display().to_string();
        if let Some((l, c)) = self.location {
            out.push_str(&format!(":{l}:{c}"));
        }
        out.push_str(": ");
        out.push_str(&self.to_string());
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, " (hint: {h})")?;
        }
        Ok(())
    }
}

/// Loading failed: every problem found, sorted by file (the main file,
/// then each included one in `include:` order) and position.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors {
    /// The file.
    pub file: PathBuf,
    /// The problems.
    pub errors: Vec<ConfigError>,
    /// Warnings found on the way (also worth showing).
    pub warnings: Vec<ConfigError>,
}

impl ConfigErrors {
    /// One problem about the whole file.
    pub fn single(file: &Path, e: ConfigError) -> Self {
        Self {
            file: file.to_path_buf(),
            errors: vec![e],
            warnings: Vec::new(),
        }
    }

    /// Each problem rendered as `FILE:LINE:COL: …`.
    pub fn rendered(&self) -> Vec<String> {
        self.errors.iter().map(|e| e.render(&self.file)).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.errors {
            writeln!(f, "  {}", e.render(&self.file))?;
        }
        Ok(())
    }
}
