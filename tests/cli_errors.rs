//! The real binary's failures: one clean `error: …` and the documented exit
//! status (README "Exit status"), never a backtrace, even with
//! `RUST_BACKTRACE=1`; a panic is one line asking for a report; a closed
//! stdout is not an error. Also `--version` (root and subcommands) and the
//! generated completions and man pages.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};

mod support_tmp;
use support_tmp::TestDir;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_callhook"));
    // The worst case for noise: every backtrace switch on.
    c.env("RUST_BACKTRACE", "full")
        .env("RUST_LIB_BACKTRACE", "1")
        .env_remove("CALLHOOK_CONFIG")
        .env_remove("CALLHOOK_LOG_FORMAT")
        .stdin(Stdio::null());
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn dir(name: &str) -> TestDir {
    TestDir::new(&format!("cli-errors-{name}"))
}

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// Asserts the status and that stderr is exactly `lines` lines, the first
/// starting with `error: `, with no trace of a backtrace or panic message.
fn assert_clean(o: &Output, status: i32, lines: usize) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(status), "stderr:\n{err}");
    assert!(err.starts_with("error: "), "stderr:\n{err}");
    assert_eq!(err.lines().count(), lines, "stderr:\n{err}");
    for noise in [
        "backtrace",
        "panicked",
        "RUST_BACKTRACE",
        "Error: ",
        "Caused by",
        "src/",
    ] {
        assert!(!err.contains(noise), "{noise:?} in stderr:\n{err}");
    }
    err
}

#[test]
fn usage_errors_exit_2() {
    let o = run(&["run", "--no-such-flag"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.starts_with("error: "), "{err}");
    let o = run(&["replay", "x.ami", "--timeout", "soon", "--config", "c.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&["deliveries", "list", "--status", "lost"]);
    assert_eq!(o.status.code(), Some(2));
    // No --config (and no CALLHOOK_CONFIG) for a command that needs one.
    let o = run(&["deliveries", "list"]);
    let err = assert_clean(&o, 2, 1);
    assert!(err.contains("--config"), "{err}");
}

#[test]
fn an_invalid_config_exits_3_with_every_error() {
    let d = dir("config");
    let cfg = d.join("callhook.yaml");
    std::fs::write(&cfg, "auht: x\n").unwrap();
    for cmd in ["check", "run"] {
        let o = run(&[cmd, "--config", cfg.to_str().unwrap()]);
        let err = assert_clean(&o, 3, 2);
        assert!(err.contains("callhook.yaml:1:1"), "{err}");
    }
    let missing = d.join("missing.yaml");
    let o = run(&["run", "--config", missing.to_str().unwrap()]);
    let err = assert_clean(&o, 3, 2);
    assert!(err.contains("cannot read the file"), "{err}");
    // A log level that is not one.
    std::fs::write(&cfg, "log: { level: loud }\n").unwrap();
    let o = run(&["check", "--config", cfg.to_str().unwrap()]);
    let err = assert_clean(&o, 3, 2);
    assert!(err.contains("log.level"), "{err}");
}

#[test]
fn a_runtime_failure_exits_1_in_one_line() {
    let d = dir("runtime");
    // state_dir is a file: the outbox cannot be opened.
    let blocker = d.join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let cfg = d.join("callhook.yaml");
    std::fs::write(&cfg, format!("state_dir: {}\n", blocker.display())).unwrap();
    let o = run(&["deliveries", "list", "--config", cfg.to_str().unwrap()]);
    let err = assert_clean(&o, 1, 1);
    assert!(err.contains("opening the outbox in"), "{err}");
}

#[test]
fn unusable_input_exits_4() {
    let d = dir("input");
    let junk = d.join("notes.txt");
    std::fs::write(&junk, "this is not an AMI capture\n").unwrap();
    let empty = d.join("empty.ami");
    std::fs::write(&empty, "").unwrap();
    for f in [&junk, &empty] {
        let o = run(&["replay", f.to_str().unwrap()]);
        let err = assert_clean(&o, 4, 1);
        assert!(err.contains("no AMI packets"), "{err}");
        assert!(err.contains(f.to_str().unwrap()), "{err}");
        assert!(o.stdout.is_empty());
    }
    // One good capture and one that is not: still refused, naming the bad one.
    let good = fixture("ami/asterisk-20/queue-answered.ami");
    let o = run(&["replay", &good, junk.to_str().unwrap()]);
    let err = assert_clean(&o, 4, 1);
    assert!(err.contains("notes.txt"), "{err}");
    let o = run(&["replay", d.join("absent.ami").to_str().unwrap()]);
    let err = assert_clean(&o, 4, 1);
    assert!(err.contains("reading"), "{err}");
}

#[test]
fn a_panic_is_one_line_asking_for_a_report() {
    let o = run(&["internal-test-panic"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(101), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: internal error"), "{err}");
    assert!(err.contains("please report"), "{err}");
    assert!(
        !err.contains("backtrace") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    // Not offered to users.
    let help = run(&["--help"]);
    assert!(!String::from_utf8_lossy(&help.stdout).contains("internal-test-panic"));
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let mut child = bin()
        .args(["replay", &fixture("ami/asterisk-20/load-dev.ami")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status:?} {err}");
    assert_eq!(err, "");
}

#[test]
fn version_names_the_build_on_every_command() {
    let o = run(&["--version"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.starts_with(&format!("callhook {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    for key in ["commit: ", "built: ", "rustc: ", "target: "] {
        assert!(text.contains(key), "{key} in {text}");
    }
    // The commit this checkout is at, when it is one.
    let head = Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert!(text.contains(&head), "{head} in {text}");
    }
    let short = run(&["-V"]);
    let short = String::from_utf8_lossy(&short.stdout);
    assert_eq!(short.lines().count(), 1, "{short}");
    for sub in ["run", "check", "replay", "backfill", "deliveries", "demo"] {
        let o = run(&[sub, "--version"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{sub}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(text.contains("commit: "), "{sub}: {text}");
    }
    let o = run(&["deliveries", "list", "--version"]);
    assert!(o.status.success());
}

/// `build.rs` outside a git checkout (a source tarball): compiled and run
/// by hand in a directory without `.git`.
#[test]
fn build_info_without_git_says_unknown() {
    let d = dir("tarball");
    let exe = d.join("build-script");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let ok = Command::new(&rustc)
        .args(["--edition", "2021", "-O", "-o"])
        .arg(&exe)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("build.rs"))
        .status()
        .unwrap();
    assert!(ok.success());
    let src = d.join("callhook-0.1.0");
    std::fs::create_dir_all(src.join("src")).unwrap();
    let o = Command::new(&exe)
        .env("CARGO_MANIFEST_DIR", &src)
        .env("RUSTC", &rustc)
        .env("TARGET", "x86_64-unknown-linux-gnu")
        .env("PROFILE", "release")
        .env("SOURCE_DATE_EPOCH", "1800000000")
        .env_remove("CALLHOOK_BUILD_COMMIT")
        // Outside any repository, even if the temp dir were inside one.
        .env("GIT_CEILING_DIRECTORIES", &d)
        .current_dir(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("cargo:rustc-env=CALLHOOK_BUILD_COMMIT=unknown\n"),
        "{out}"
    );
    assert!(
        out.contains("cargo:rustc-env=CALLHOOK_BUILD_DIRTY=false\n"),
        "{out}"
    );
    assert!(
        out.contains("cargo:rustc-env=CALLHOOK_BUILD_DATE=2027-01-15\n"),
        "{out}"
    );
    assert!(
        out.contains("cargo:rustc-env=CALLHOOK_BUILD_RUSTC=rustc "),
        "{out}"
    );
    // A packager can say which commit the tarball is.
    let o = Command::new(&exe)
        .env("CARGO_MANIFEST_DIR", &src)
        .env("CALLHOOK_BUILD_COMMIT", "0123456789abcdef0123")
        .env("GIT_CEILING_DIRECTORIES", &d)
        .current_dir(&src)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("CALLHOOK_BUILD_COMMIT=0123456789abcdef0123\n"),
        "{out}"
    );
}

#[test]
fn bash_completion_completes_subcommands_and_options() {
    let o = run(&["completions", "bash"]);
    assert!(o.status.success());
    let d = dir("completion");
    let script = d.join("callhook.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    // Load the script in a real bash and ask it, as readline would.
    let ask = |words: &str| -> String {
        let cmd = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); \
             _callhook callhook \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"; \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            script.display()
        );
        let o = Command::new("bash")
            .args(["--norc", "-c", &cmd])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let subs = ask("callhook de");
    assert!(subs.lines().any(|l| l == "deliveries"), "{subs}");
    assert!(subs.lines().any(|l| l == "demo"), "{subs}");
    let opts = ask("callhook backfill --cd");
    assert!(opts.lines().any(|l| l == "--cdr"), "{opts}");
    let shells = ask("callhook completions z");
    assert!(shells.lines().any(|l| l == "zsh"), "{shells}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let o = run(&["completions", shell]);
        assert!(o.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("backfill"),
            "{shell}"
        );
    }
}

#[test]
fn man_pages_render_and_cover_every_command() {
    let o = run(&["man"]);
    assert!(o.status.success());
    let page = String::from_utf8_lossy(&o.stdout);
    assert!(page.contains(".TH callhook 1"), "{page}");
    assert!(page.contains("Exit status"), "exit statuses in the page");
    assert!(page.contains("NO_COLOR"), "environment in the page");
    let d = dir("man");
    let o = run(&["man", "--dir", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "callhook.1",
        "callhook-run.1",
        "callhook-replay.1",
        "callhook-backfill.1",
        "callhook-deliveries-list.1",
        "callhook-completions.1",
    ] {
        assert!(d.join(f).is_file(), "{f} written");
    }
    assert!(!d.join("callhook-internal-test-panic.1").exists());
    // groff reads it without a warning (when installed, as on CI).
    if let Ok(g) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(d.join("callhook-backfill.1"))
        .output()
    {
        assert!(g.status.success());
        assert_eq!(String::from_utf8_lossy(&g.stderr), "", "groff warnings");
    }
}
