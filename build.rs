//! Build information for `callhook --version` (see `src/build_info.rs`).
//!
//! Works with or without git: in a clone the commit and a dirty flag come
//! from `git`; in a source tarball (no `.git`, or no `git` program) they
//! are `unknown` unless the packager sets `CALLHOOK_BUILD_COMMIT` (and
//! optionally `CALLHOOK_BUILD_DIRTY=true`). The build date honours
//! `SOURCE_DATE_EPOCH` (reproducible builds), else it is today (UTC).
//!
//! The script reruns when HEAD moves or a source file changes (so the dirty
//! flag follows the sources the binary is built from), not on every
//! `git add`: an index change alone never rebuilds the crate.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    for p in ["build.rs", "Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={p}");
    }
    for v in [
        "CALLHOOK_BUILD_COMMIT",
        "CALLHOOK_BUILD_DIRTY",
        "SOURCE_DATE_EPOCH",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }

    let (commit, dirty) = match std::env::var("CALLHOOK_BUILD_COMMIT") {
        Ok(c) if !c.trim().is_empty() => (
            c.trim().to_string(),
            std::env::var("CALLHOOK_BUILD_DIRTY").is_ok_and(|v| v == "true" || v == "1"),
        ),
        _ => from_git(&dir).unwrap_or_else(|| ("unknown".into(), false)),
    };
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    let rustc = std::env::var_os("RUSTC")
        .and_then(|r| Command::new(r).arg("--version").output().ok())
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "rustc (unknown version)".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());

    println!("cargo:rustc-env=CALLHOOK_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=CALLHOOK_BUILD_DIRTY={dirty}");
    println!("cargo:rustc-env=CALLHOOK_BUILD_DATE={}", civil_date(epoch));
    println!("cargo:rustc-env=CALLHOOK_BUILD_RUSTC={rustc}");
    println!("cargo:rustc-env=CALLHOOK_BUILD_TARGET={target}");
    println!("cargo:rustc-env=CALLHOOK_BUILD_PROFILE={profile}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit and dirty flag, and rerun triggers on HEAD and its ref, when
/// `dir` is a git checkout (a worktree's `.git` is a file: ask git where
/// things are rather than assume `.git/HEAD`).
fn from_git(dir: &Path) -> Option<(String, bool)> {
    // Only the repository this crate is the top of: a tarball unpacked
    // inside some other checkout must not report that checkout's commit.
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "HEAD"])?;
    for p in [
        git(dir, &["rev-parse", "--git-path", "HEAD"]),
        git(dir, &["rev-parse", "--git-path", "packed-refs"]),
        git(dir, &["symbolic-ref", "-q", "HEAD"])
            .and_then(|r| git(dir, &["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        let p = if Path::new(&p).is_absolute() {
            PathBuf::from(p)
        } else {
            dir.join(p)
        };
        if p.exists() {
            println!("cargo:rerun-if-changed={}", p.display());
        }
    }
    // Tracked files that differ from HEAD (untracked files are not part of
    // the build unless Cargo sees them, and then `src` triggers a rerun).
    let dirty =
        git(dir, &["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some((commit, dirty))
}

/// `YYYY-MM-DD` (UTC) of a Unix time (days-to-civil, proleptic Gregorian).
fn civil_date(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
