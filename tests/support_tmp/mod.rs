//! Temporary directories for tests, through one guard: [`TestDir`] creates a
//! fresh `callhook-<name>-XXXXXX` directory under the system temp dir and
//! removes it when dropped, except while the test is panicking: then it is
//! kept and its path printed, so a failure stays debuggable.
//!
//! Every test binary that uses a `support_*` module making directories
//! (daemon, http, db, nats) declares `mod support_tmp;` beside it: they use
//! `crate::support_tmp::TestDir`, so one binary has one such type.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::ops::Deref;
use std::path::{Path, PathBuf};

/// A temporary directory, removed on drop (kept when panicking).
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl TestDir {
    /// Creates `<temp dir>/callhook-<name>-XXXXXX` (a fresh, empty, unique
    /// directory).
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("callhook-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {name}: {e}"));
        let path = dir.path().to_path_buf();
        TestDir {
            dir: Some(dir),
            path,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<OsStr> for TestDir {
    fn as_ref(&self) -> &OsStr {
        self.path.as_os_str()
    }
}

impl std::fmt::Debug for TestDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.path.fmt(f)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if std::thread::panicking() {
                eprintln!("test dir kept for debugging: {}", dir.keep().display());
            }
            // Otherwise `dir` drops here and removes the tree.
        }
    }
}
