//! How the command line fails: one `error: …` line (with its causes) on
//! stderr and a documented exit status, never a backtrace; a panic (a bug)
//! prints one line asking for a report.
//!
//! | status | meaning |
//! |---|---|
//! | 0 | success (also when stdout is closed early: `… \| head`) |
//! | 1 | runtime failure: I/O, the outbox, the network, requests that failed or did not go out in time |
//! | 2 | usage: an unknown option, a missing or malformed argument, options that contradict each other |
//! | 3 | the configuration is invalid (`check`, or any command given a config it refuses) |
//! | 4 | unusable input: a capture or CDR file that cannot be read or holds no AMI packets |
//! | 101 | internal error (a panic: a bug, please report it) |

use std::fmt::Display;
use std::process::ExitCode;

/// Why the command failed, which is its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 1.
    Runtime = 1,
    /// 2 (also clap's own status for usage errors).
    Usage = 2,
    /// 3.
    Config = 3,
    /// 4.
    Input = 4,
}

/// A failed command: what to print and which status to exit with.
#[derive(Debug)]
pub struct Failure {
    pub code: Code,
    pub error: anyhow::Error,
}

/// Any error is a runtime failure unless said otherwise.
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: Code::Runtime,
            error: e.into(),
        }
    }
}

impl Failure {
    pub fn new(code: Code, msg: String) -> Self {
        Failure {
            code,
            error: anyhow::Error::msg(msg),
        }
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;

/// Gives an error its exit status (and optionally context).
pub trait Coded<T> {
    fn code_with<C: Display + Send + Sync + 'static>(
        self,
        code: Code,
        ctx: impl FnOnce() -> C,
    ) -> CliResult<T>;
}

impl<T, E: Into<anyhow::Error>> Coded<T> for Result<T, E> {
    fn code_with<C: Display + Send + Sync + 'static>(
        self,
        code: Code,
        ctx: impl FnOnce() -> C,
    ) -> CliResult<T> {
        self.map_err(|e| Failure {
            code,
            error: e.into().context(ctx()),
        })
    }
}

/// `return Err(fail!(Code::Usage, "…{x}"))`.
macro_rules! fail {
    ($code:expr, $($arg:tt)*) => {
        $crate::cli::exit::Failure::new($code, format!($($arg)*))
    };
}
pub(crate) use fail;

/// True when the error is a closed stdout (`callhook … | head`): not a failure.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The text printed for a failure: `error: top: cause: cause`, one line
/// unless a message is itself several lines (a config error list).
pub fn render(e: &anyhow::Error) -> String {
    let mut s = String::from("error: ");
    let mut first = true;
    for c in e.chain() {
        let text = c.to_string();
        let text = text.trim_end();
        if !first {
            s.push_str(if text.contains('\n') { ":\n" } else { ": " });
        }
        s.push_str(text);
        first = false;
    }
    s
}

/// Prints a failure and gives the exit status.
pub fn report(r: CliResult) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if is_broken_pipe(&f.error) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("{}", render(&f.error));
            ExitCode::from(f.code as u8)
        }
    }
}

/// Replaces Rust's panic message (thread name, `RUST_BACKTRACE` hint or a
/// backtrace) with one line asking for a report. The process then exits
/// with status 101 when the main thread panicked; a panic in a background
/// task is handled (and logged) by whoever awaits it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let msg = msg.replace('\n', " ");
        eprintln!(
            "error: internal error (a bug in callhook {}): {msg}{at}; please report it with this line and the command that caused it",
            callhook::build_info::short()
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_on_one_line() {
        let e = anyhow::anyhow!("connection refused").context("opening the outbox in /x");
        assert_eq!(
            render(&e),
            "error: opening the outbox in /x: connection refused"
        );
        let cfg = anyhow::anyhow!("a.yaml: 2 errors\n  a.yaml:1:1: x\n  a.yaml:2:1: y\n");
        assert_eq!(
            render(&cfg),
            "error: a.yaml: 2 errors\n  a.yaml:1:1: x\n  a.yaml:2:1: y"
        );
    }

    #[test]
    fn broken_pipe_is_not_a_failure() {
        let e: anyhow::Error = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "pipe").into();
        assert!(is_broken_pipe(&e.context("writing")));
    }
}
