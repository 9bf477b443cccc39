//! The `callhook` command line: thin glue over the library (anyhow lives
//! here and in `cli/`). Failures print one `error: …` and exit with the
//! status documented in `cli/exit.rs` and the README.

mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::deliver::outbox::Status;
use callhook::logging::{self, LogFormat, LogSettings};
use callhook::model::ModelEvent;
use callhook::replay::{self, Format};

use cli::exit::{fail, CliResult, Code, Coded};

/// Turns Asterisk call events into one call model and CRM webhooks.
#[derive(Parser, Debug)]
#[command(
    name = "callhook",
    about,
    long_about = None,
    propagate_version = true,
    after_long_help = MAIN_HELP
)]
struct Cli {
    /// Log format on stderr (default: the config's `log.format`, else text).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "CALLHOOK_LOG_FORMAT"
    )]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

const MAIN_HELP: &str = "\
Exit status:
  0    success
  1    runtime failure (I/O, outbox, network; requests that failed or did not go out in time)
  2    usage error (unknown option, missing or malformed argument)
  3    the configuration is invalid
  4    unusable input (a capture or CDR file that cannot be read or holds no AMI packets)
  101  internal error (a bug: please report it)

Environment:
  CALLHOOK_CONFIG      configuration file (instead of --config)
  CALLHOOK_LOG         log level or filter (error, warn, info, debug, trace; info,callhook::deliver=debug)
  CALLHOOK_LOG_FORMAT  text or json (instead of --log-format)
  NO_COLOR             set and not empty: no colours in logs (they are only used on a terminal anyway)";

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormatArg {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(f: LogFormatArg) -> Self {
        match f {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: connect to every configured PBX, apply the rules and
    /// deliver the webhooks. SIGHUP reloads the config, SIGTERM stops cleanly.
    Run {
        /// Configuration file (YAML).
        #[arg(short, long, env = "CALLHOOK_CONFIG")]
        config: PathBuf,
        /// Also print the call model on stdout (logs go to stderr).
        #[arg(long, value_enum)]
        print: Option<OutFormat>,
    },
    /// Replay recorded AMI captures through the live code path. Without
    /// `--config`, prints the call model; with it, the rules' requests go
    /// through the outbox for real, or are only printed with `--dry-run`.
    /// Several captures are successive connections of one PBX (e.g.
    /// `reconnect-before.ami reconnect-after.ami`).
    Replay {
        /// Capture files (raw AMI bytes as received).
        #[arg(required = true)]
        captures: Vec<PathBuf>,
        /// Configuration file (classification, rules, targets).
        #[arg(short, long, env = "CALLHOOK_CONFIG")]
        config: Option<PathBuf>,
        /// Print the requests the rules would send instead of sending them.
        #[arg(long, requires = "config")]
        dry_run: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// PBX id to stamp on events.
        #[arg(long, default_value = "main")]
        pbx: String,
        /// With --config (not --dry-run): stop waiting for the targets after
        /// this long (`30s`, `5m`); what is left stays in the outbox and the
        /// exit status is 1. Default: wait until every request is delivered,
        /// dead or expired.
        #[arg(long, value_name = "DURATION", requires = "config", conflicts_with = "dry_run", value_parser = parse_duration_arg)]
        timeout: Option<Duration>,
        /// Print the presence timeline (every extension's state changes,
        /// then the table at the end) instead of the call model; sends
        /// nothing.
        #[arg(long, conflicts_with_all = ["dry_run", "timeout"])]
        presence: bool,
    },
    /// Validate a configuration file; prints every problem with its file,
    /// line and column, and exits non-zero when there is one.
    Check {
        /// Configuration file (YAML).
        #[arg(short, long, env = "CALLHOOK_CONFIG")]
        config: PathBuf,
    },
    /// Run rule-set unit tests: each FILE names a rule set (or a config) and
    /// gives model events or captures with the requests they must produce
    /// (format in the README, examples in rules/tests/). Exits non-zero
    /// when a test fails.
    Test {
        /// Test files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Inspect and retry deliveries in the outbox (`state_dir` of the config).
    Deliveries(DeliveriesArgs),
    /// Check the outbox file for damage, or recover a damaged one.
    Outbox(OutboxArgs),
    /// Play bundled real captures on a simulated PBX into callhook with
    /// `rules/demo.yaml` and a built-in webhook sink, and print a timeline.
    Demo {
        /// Replay speed (2 = twice as fast as the calls really happened).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Send the finished calls of Asterisk's CDR file (`Master.csv`) or CDR
    /// database table through the rules and the outbox, each once.
    ///
    /// The calls go through the same number rewriting, `scope: call, state:
    /// hungup` rules and outbox as live calls: a request whose idempotency
    /// key the outbox already has (sent live or by an earlier backfill) is
    /// not sent again, so it can run from cron over overlapping periods.
    /// Malformed rows are reported with their line number (or, from a
    /// database, their uniqueid and start) and skipped.
    #[command(after_long_help = BACKFILL_HELP)]
    Backfill(Box<BackfillArgs>),
    /// Print a shell completion script (e.g. `callhook completions bash >
    /// /etc/bash_completion.d/callhook`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`callhook man | man -l -`), or with --dir write
    /// one page per command (`callhook.1`, `callhook-run.1`, …) there.
    Man {
        /// Directory to write the pages into (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Panics on purpose: tests that a bug is reported in one line.
    #[command(hide = true, name = "internal-test-panic")]
    InternalTestPanic,
    /// Print the argon2id hash of a PIN read from stdin, for `pin.hash` of
    /// an AGI route (`echo 4711 | callhook hash-pin`).
    HashPin,
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    callhook::values::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 5m, 1h)"))
}

const BACKFILL_HELP: &str = "\
A call is taken when it ENDED in [--since, --until). Without --since, as far
back as the outbox remembers idempotency keys (outbox.dedupe_window, default
7d, minus 15 min); an earlier --since is refused (set e.g.
`outbox: { dedupe_window: 400d }` to backfill a year).

Rows are read as cdr_csv writes them (no header): 16 to 21 columns, i.e.
the classic ones plus loguniqueid / loguserfield / newcdrcolumns (linkedid),
or a CSV export with a header line naming the columns (calldate, src, ...).

From a database (cdr_mysql, cdr_adaptive_odbc, cdr_pgsql), each run reads on
from the cursor saved in state_dir (cdr-cursors/); with --until, or
--no-cursor, it reads the period alone and saves nothing.

Examples:
  callhook backfill --cdr /var/log/asterisk/cdr-csv/Master.csv --config /etc/callhook.yaml --since 2h
  CALLHOOK_CDR_DB_PASSWORD=... callhook backfill --cdr-db mysql://asterisk@db/asteriskcdrdb --config /etc/callhook.yaml
  callhook backfill --cdr-db postgres://asterisk@db/asterisk --cdr-db-password-file /etc/callhook/cdr-db.pw --config /etc/callhook.yaml
  callhook backfill --cdr Master.csv --config callhook.yaml --since '2026-11-30 08:00' --until '2026-11-30 18:00' --dry-run
  zcat Master.csv.1.gz | callhook backfill --cdr - --config callhook.yaml --cdr-timezone -05:00

From cron, give it the daemon's state_dir (absolute) and environment:
cron runs with none, in another working directory.";

#[derive(Args, Debug)]
struct BackfillArgs {
    /// CDR file (`/var/log/asterisk/cdr-csv/Master.csv`); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    cdr: Option<PathBuf>,
    /// CDR database instead of a file: `mysql://USER@HOST[:PORT]/DATABASE`
    /// (MySQL, MariaDB) or `postgres://USER@HOST[:PORT]/DATABASE`, with the
    /// drivers' options (`?ssl-mode=required`, `?sslmode=require`). The
    /// password: --cdr-db-password-file, else $CALLHOOK_CDR_DB_PASSWORD (in
    /// the URL it works too, but shows in `ps`). Reads on from a cursor
    /// saved in state_dir, so a run from cron reads only new rows.
    #[arg(
        long,
        value_name = "URL",
        env = "CALLHOOK_CDR_DB",
        hide_env_values = true
    )]
    cdr_db: Option<String>,
    /// File holding the --cdr-db password (`${CREDENTIALS_DIRECTORY}/cdr-db`
    /// with systemd's LoadCredential=).
    #[arg(long, value_name = "FILE", requires = "cdr_db")]
    cdr_db_password_file: Option<PathBuf>,
    /// --cdr-db: the table (default `cdr`; `SCHEMA.TABLE` for another
    /// schema or database).
    #[arg(long, value_name = "TABLE", requires = "cdr_db")]
    cdr_table: Option<String>,
    /// --cdr-db: a CDR field held in a column of another name (repeat as
    /// needed), e.g. `start=calldate`, `src=source`. By default the
    /// columns are Asterisk's: start (or calldate), answer, end, src, dst,
    /// channel, dstchannel, uniqueid, linkedid, sequence and the rest
    #[arg(long, value_name = "FIELD=COLUMN", requires = "cdr_db")]
    cdr_column: Vec<String>,
    /// --cdr-db: a call whose last row ended less than this before the
    /// newest row (and before now) may still be in progress: it is left
    /// for the next run (default 10m).
    #[arg(long, value_name = "DURATION", requires = "cdr_db")]
    settle: Option<String>,
    /// --cdr-db: read from --since, and neither use nor save the cursor.
    #[arg(long, requires = "cdr_db")]
    no_cursor: bool,
    /// Configuration file (classification, rewriting, rules, targets, state_dir).
    #[arg(short, long, env = "CALLHOOK_CONFIG")]
    config: PathBuf,
    /// Only calls that ended at or after this: a duration back from now
    /// (`2h`, `200h`, `7d`) or a date / time (`2026-11-01`,
    /// `2026-11-01 08:00`, `2026-11-01T08:00:00+02:00`; without an offset,
    /// in the CDR time zone).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only calls that ended before this (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Time zone of the CDR times: `auto` (default): each call's offset
    /// from its uniqueid, which follows daylight saving (`auto:Europe/Madrid`
    /// or `auto:+01:00` sets the zone for ids that do not tell, else UTC);
    /// an IANA name (`America/Mexico_City`, daylight saving applied to
    /// every time); `UTC` (right with `usegmtime=yes`); or a fixed offset
    /// (`+02:00`, `-0300`).
    #[arg(
        long,
        value_name = "ZONE|OFFSET|auto",
        default_value = "auto",
        env = "CALLHOOK_CDR_TIMEZONE"
    )]
    cdr_timezone: String,
    /// PBX id stamped on the calls: the `pbx:` id of the PBX that wrote the
    /// file (default: the only PBX configured, else `main`).
    #[arg(long)]
    pbx: Option<String>,
    /// Print the requests the rules would send instead of enqueuing them.
    #[arg(long)]
    dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value_t = OutFormat::Text)]
    format: OutFormat,
    /// Also deliver what is waiting, until nothing is: only for setups
    /// where no `callhook run` uses this state_dir (a running daemon
    /// delivers what a backfill enqueues within seconds).
    #[arg(long, conflicts_with = "dry_run")]
    deliver: bool,
    /// With --deliver: stop waiting for the targets after this long
    /// (`10m`); what is left stays in the outbox, the exit status is 1.
    #[arg(long, value_name = "DURATION", requires = "deliver", value_parser = parse_duration_arg)]
    timeout: Option<Duration>,
    /// Rows of one call are grouped while at most this far apart in CDR
    /// time (default: `calls.max_age` of the config, 4h).
    #[arg(long, value_name = "DURATION")]
    group_window: Option<String>,
    /// No progress bar (it is only drawn when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Args, Debug)]
struct DeliveriesArgs {
    #[command(subcommand)]
    action: DeliveriesAction,
    /// Configuration file (for `state_dir`).
    #[arg(short, long, global = true, env = "CALLHOOK_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct OutboxArgs {
    #[command(subcommand)]
    action: OutboxAction,
    /// Configuration file (for `state_dir`).
    #[arg(
        short,
        long,
        global = true,
        env = "CALLHOOK_CONFIG",
        conflicts_with = "state_dir"
    )]
    config: Option<PathBuf>,
    /// The state directory itself, instead of a configuration file.
    #[arg(long, global = true, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum OutboxAction {
    /// Read every page and delivery of `outbox.sqlite3` and report what is
    /// damaged (safe while the daemon runs); exits 1 when something is.
    Check,
    /// Copy every readable delivery into a fresh database and put it in
    /// place, keeping the damaged file as `outbox.sqlite3.damaged-<time>`
    /// (the daemon must be stopped).
    Recover,
}

#[derive(Subcommand, Debug)]
enum DeliveriesAction {
    /// List deliveries, newest first.
    List {
        /// Only dead deliveries (gave up after their retries).
        #[arg(long)]
        dead: bool,
        /// Only this state.
        #[arg(long, value_enum, conflicts_with = "dead")]
        status: Option<StatusArg>,
        /// Only this target.
        #[arg(long)]
        target: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Send dead deliveries again (fresh attempts).
    Retry {
        /// The delivery id.
        #[arg(required_unless_present = "all_dead")]
        id: Option<i64>,
        /// Every dead delivery.
        #[arg(long)]
        all_dead: bool,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum StatusArg {
    /// Waiting for an attempt.
    Pending,
    /// Being sent.
    Inflight,
    /// Delivered.
    Done,
    /// Gave up after the retries (or a permanent error).
    Dead,
    /// Not sent in time (the rule's max_age).
    Expired,
}

impl From<StatusArg> for Status {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => Status::Pending,
            StatusArg::Inflight => Status::Inflight,
            StatusArg::Done => Status::Done,
            StatusArg::Dead => Status::Dead,
            StatusArg::Expired => Status::Expired,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum OutFormat {
    /// One JSON object per line (schema in the README).
    Jsonl,
    /// A readable timeline.
    Text,
}

impl From<OutFormat> for Format {
    fn from(f: OutFormat) -> Self {
        match f {
            OutFormat::Jsonl => Format::Jsonl,
            OutFormat::Text => Format::Text,
        }
    }
}

/// `--log-format` (or `CALLHOOK_LOG_FORMAT`), set once in `main`.
static LOG_FORMAT: OnceLock<Option<LogFormat>> = OnceLock::new();

/// Starts logging on stderr with the config's `log:` settings (the command
/// line and `CALLHOOK_LOG` win). Only the first call counts.
fn init_logs(settings: &LogSettings) {
    let format = LOG_FORMAT.get().copied().flatten();
    if let Some(w) = logging::init(format, settings) {
        eprintln!("warning: {w}");
    }
}

/// Loads and validates a config (status 3 when it is refused), then starts
/// logging with its `log:` section.
fn load(path: &Path) -> CliResult<Config> {
    let cfg = Config::load(path).map_err(|e| fail!(Code::Config, "{e}"))?;
    init_logs(&cfg.log);
    Ok(cfg)
}

/// Reads what the outbox commands need of a config (no secrets needed,
/// status 3 when it does not parse), then starts logging.
fn load_outbox(path: &Path) -> CliResult<callhook::config::OutboxSettings> {
    let s = Config::load_outbox(path).map_err(|e| fail!(Code::Config, "{e}"))?;
    init_logs(&s.log);
    Ok(s)
}

/// Loads a configuration for `run`: what `check` accepts (status 3
/// otherwise), warnings logged.
fn load_daemon(path: &Path) -> CliResult<Config> {
    let cfg = load(path)?;
    let errors = cfg.daemon_errors();
    if !errors.is_empty() {
        let e = callhook::config::ConfigErrors {
            file: path.to_path_buf(),
            errors,
            warnings: Vec::new(),
        };
        return Err(fail!(Code::Config, "{e}"));
    }
    for w in cfg.daemon_warnings() {
        tracing::warn!("{}", w.render(path));
    }
    Ok(cfg)
}

/// `check`: every error and warning; status 3 on an error (what `run`
/// would refuse).
/// `hash-pin`: the argon2id hash of a PIN read from stdin (never argv:
/// it would show in `ps` and the shell history).
fn hash_pin_cmd() -> CliResult {
    let mut pin = String::new();
    std::io::stdin().read_line(&mut pin)?;
    let pin = pin.trim_end_matches(['\r', '\n']);
    if pin.is_empty() || !pin.chars().all(|c| c.is_ascii_digit() || c == '*') {
        return Err(fail!(
            Code::Input,
            "a PIN is digits (and *), read from stdin: echo 4711 | callhook hash-pin"
        ));
    }
    let h = callhook::agi::pin::hash_pin(pin).map_err(|e| fail!(Code::Runtime, "{e}"))?;
    println!("{h}");
    Ok(())
}

fn check_cmd(config: &Path) -> CliResult {
    let print_warnings = |ws: &[callhook::config::ConfigError]| {
        for w in ws {
            eprintln!("  warning: {}", w.render(config));
        }
    };
    match Config::load(config) {
        Ok(cfg) => {
            let errors = cfg.daemon_errors();
            let warnings = cfg.daemon_warnings();
            if !errors.is_empty() {
                let e = callhook::config::ConfigErrors {
                    file: config.to_path_buf(),
                    errors,
                    warnings: Vec::new(),
                };
                print_warnings(&warnings);
                return Err(fail!(Code::Config, "{e}"));
            }
            let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
            writeln!(
                std::io::stdout().lock(),
                "{}: ok ({}, {}, {}{})",
                config.display(),
                n(cfg.pbx.len(), "PBX"),
                n(cfg.targets.len(), "target"),
                n(cfg.rules.len(), "rule"),
                if warnings.is_empty() {
                    String::new()
                } else {
                    format!(", {}", n(warnings.len(), "warning"))
                },
            )?;
            print_warnings(&warnings);
            Ok(())
        }
        Err(e) => {
            print_warnings(&e.warnings);
            Err(fail!(Code::Config, "{e}"))
        }
    }
}

/// `test`: runs every file, prints each case; status 1 when a case fails
/// or a file cannot run.
fn test_cmd(files: &[PathBuf]) -> CliResult {
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    let mut out = std::io::stdout().lock();
    for f in files {
        let r = callhook::ruletest::run_file(f);
        write!(out, "{}", r.render())?;
        broken += usize::from(!r.errors.is_empty());
        for c in &r.cases {
            if c.failures.is_empty() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    writeln!(
        out,
        "{passed} passed, {failed} failed{}",
        if broken > 0 {
            format!(
                " ({broken} file{} could not run)",
                if broken == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    )?;
    drop(out);
    if failed > 0 || broken > 0 {
        return Err(fail!(
            Code::Runtime,
            "{failed} test cases failed, {broken} files could not run"
        ));
    }
    Ok(())
}

fn runtime() -> CliResult<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().code_with(Code::Runtime, || "starting the runtime")
}

/// The command-line definition, with the build information as version.
fn command() -> clap::Command {
    static VERSION: OnceLock<(String, String)> = OnceLock::new();
    let (short, long) =
        VERSION.get_or_init(|| (callhook::build_info::short(), callhook::build_info::long()));
    Cli::command()
        .version(short.as_str())
        .long_version(long.as_str())
}

fn main() -> ExitCode {
    cli::exit::install_panic_hook();
    // Usage errors, --help and --version exit here (status 2 or 0).
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let _ = LOG_FORMAT.set(cli.log_format.map(Into::into));
    cli::exit::report(dispatch(cli.command))
}

fn dispatch(cmd: Command) -> CliResult {
    match cmd {
        Command::Replay {
            captures,
            config,
            dry_run,
            format,
            pbx,
            timeout,
            presence,
        } => {
            if presence {
                cli::replay::run_presence(captures, config, format.into(), pbx)
            } else {
                cli::replay::run(captures, config, dry_run, format.into(), pbx, timeout)
            }
        }
        Command::Check { config } => check_cmd(&config),
        Command::Test { files } => test_cmd(&files),
        Command::HashPin => hash_pin_cmd(),
        Command::Run { config, print } => {
            let cfg = load_daemon(&config)?;
            let observer = print.map(|f| {
                let f: Format = f.into();
                Box::new(move |evs: &[ModelEvent]| {
                    let stdout = std::io::stdout();
                    let mut w = stdout.lock();
                    for e in evs {
                        let _ = replay::write_event(&mut w, e, f);
                    }
                    let _ = w.flush();
                }) as app::Observer
            });
            let opts = RunOptions {
                config_path: Some(config),
                observer,
                ..RunOptions::default()
            };
            runtime()?.block_on(app::run(cfg, opts))?;
            Ok(())
        }
        Command::Deliveries(args) => cli::deliveries::run(args),
        Command::Outbox(args) => cli::outbox::run(args),
        Command::Demo { speed } => {
            if !(speed.is_finite() && speed > 0.0) {
                return Err(fail!(Code::Usage, "--speed must be a positive number"));
            }
            init_logs(&LogSettings::default());
            runtime()?.block_on(callhook::demo::run(speed))?;
            Ok(())
        }
        Command::Backfill(args) => cli::backfill::run(*args),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            cli::generate::completions(command(), shell, &mut out);
            std::io::stdout().lock().write_all(&out)?;
            Ok(())
        }
        Command::Man { dir: None } => {
            let mut out = Vec::new();
            cli::generate::man(command(), &mut out)?;
            std::io::stdout().lock().write_all(&out)?;
            Ok(())
        }
        Command::Man { dir: Some(dir) } => {
            let files = cli::generate::man_pages(command(), &dir)
                .code_with(Code::Runtime, || {
                    format!("writing man pages into {}", dir.display())
                })?;
            let mut out = std::io::stdout().lock();
            for f in files {
                writeln!(out, "{}", f.display())?;
            }
            Ok(())
        }
        Command::InternalTestPanic => panic!("internal-test-panic was asked for"),
    }
}
