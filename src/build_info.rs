//! What this binary was built from (set by `build.rs`): `callhook
//! --version`, and for anyone who exports it (e.g. a `build_info` metric).
//! Without git (a source tarball) the commit is `unknown`.

/// The crate version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Full git commit hash, or `unknown`.
pub const COMMIT: &str = env!("CALLHOOK_BUILD_COMMIT");
/// True when tracked files differed from the commit at build time.
pub const DIRTY: bool = const_str_eq(env!("CALLHOOK_BUILD_DIRTY"), "true");
/// Build date, `YYYY-MM-DD` UTC (`SOURCE_DATE_EPOCH` when set).
pub const DATE: &str = env!("CALLHOOK_BUILD_DATE");
/// `rustc --version` of the compiler.
pub const RUSTC: &str = env!("CALLHOOK_BUILD_RUSTC");
/// Target triple.
pub const TARGET: &str = env!("CALLHOOK_BUILD_TARGET");
/// Cargo profile (`release`, `debug`).
pub const PROFILE: &str = env!("CALLHOOK_BUILD_PROFILE");

const fn const_str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The commit shortened to 12 characters, `-dirty` appended when dirty.
pub fn short_commit() -> String {
    let c = COMMIT.get(..12).unwrap_or(COMMIT);
    if DIRTY {
        format!("{c}-dirty")
    } else {
        c.to_string()
    }
}

/// One line: `0.1.0 (3f2a9c1d0b7e 2026-05-01)`.
pub fn short() -> String {
    format!("{VERSION} ({} {DATE})", short_commit())
}

/// Several lines, for `--version`.
pub fn long() -> String {
    format!(
        "{VERSION}\ncommit: {COMMIT}{}\nbuilt:  {DATE} ({PROFILE} profile)\nrustc:  {RUSTC}\ntarget: {TARGET}",
        if DIRTY { " (dirty: uncommitted changes)" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_filled() {
        assert!(!COMMIT.is_empty());
        assert_eq!(DATE.len(), 10, "{DATE}");
        assert!(RUSTC.starts_with("rustc"), "{RUSTC}");
        assert!(!TARGET.is_empty());
        assert!(long().contains(TARGET));
        assert!(short().starts_with(VERSION));
    }
}
