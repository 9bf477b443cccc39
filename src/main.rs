//! The `callhook` command line: thin glue over the library (anyhow lives
//! here and in `cli/`). Failures print one `error: …` and exit with the
//! status documented in `cli/exit.rs` and the README.

mod cli;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::deliver::outbox::{ListFilter, Outbox, Status};
use callhook::deliver::DeliveryRequest;
use callhook::logging::{self, LogFormat, LogSettings};
use callhook::model::ModelEvent;
use callhook::normalize::Normalizer;
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
        #[arg(short, long)]
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
    },
    /// Validate a configuration file; prints every problem with its file,
    /// line and column, and exits non-zero when there is one.
    Check {
        /// Configuration file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Inspect and retry deliveries in the outbox (`state_dir` of the config).
    Deliveries(DeliveriesArgs),
    /// Play bundled real captures on a simulated PBX into callhook with
    /// `rules/demo.yaml` and a built-in webhook sink, and print a timeline.
    Demo {
        /// Replay speed (2 = twice as fast as the calls really happened).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
    },
    /// Send the finished calls of Asterisk's CDR file (`Master.csv`) through
    /// the rules and the outbox, each once.
    ///
    /// The calls go through the same number rewriting, `scope: call, state:
    /// hungup` rules and outbox as live calls: a request whose idempotency
    /// key the outbox already has (sent live or by an earlier backfill) is
    /// not sent again, so it can run from cron over overlapping periods.
    /// Malformed rows are reported with their line number and skipped.
    #[command(after_long_help = BACKFILL_HELP)]
    Backfill(BackfillArgs),
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
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    callhook::config::parse_duration(s)
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

Examples:
  callhook backfill --cdr /var/log/asterisk/cdr-csv/Master.csv --config /etc/callhook.yaml --since 2h
  callhook backfill --cdr Master.csv --config callhook.yaml --since '2026-11-30 08:00' --until '2026-11-30 18:00' --dry-run
  zcat Master.csv.1.gz | callhook backfill --cdr - --config callhook.yaml --cdr-timezone -05:00

From cron, give it the daemon's state_dir (absolute) and environment:
cron runs with none, in another working directory.";

#[derive(Args, Debug)]
struct BackfillArgs {
    /// CDR file (`/var/log/asterisk/cdr-csv/Master.csv`); `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    cdr: PathBuf,
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
    /// from its uniqueid, which follows daylight saving (`auto:+01:00` sets
    /// the offset for ids that do not tell, else UTC); `UTC` (right with
    /// `usegmtime=yes`); or a fixed offset (`+02:00`, `-0300`).
    #[arg(
        long,
        value_name = "OFFSET|auto",
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
        } => replay_cmd(captures, config, dry_run, format.into(), pbx, timeout),
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                let n =
                    |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{}: ok ({}, {}, {})",
                    config.display(),
                    n(cfg.pbx.len(), "PBX"),
                    n(cfg.targets.len(), "target"),
                    n(cfg.rules.len(), "rule"),
                )?;
                Ok(())
            }
            Err(e) => Err(fail!(Code::Config, "{e}")),
        },
        Command::Run { config, print } => {
            let cfg = load(&config)?;
            if cfg.pbx.is_empty() && cfg.push.is_none() {
                return Err(fail!(
                    Code::Config,
                    "{}: no source configured (add a `pbx:` entry or a `push:` section)",
                    config.display()
                ));
            }
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
                listener: None,
            };
            runtime()?.block_on(app::run(cfg, opts))?;
            Ok(())
        }
        Command::Deliveries(args) => deliveries_cmd(args),
        Command::Demo { speed } => {
            if !(speed.is_finite() && speed > 0.0) {
                return Err(fail!(Code::Usage, "--speed must be a positive number"));
            }
            init_logs(&LogSettings::default());
            runtime()?.block_on(callhook::demo::run(speed))?;
            Ok(())
        }
        Command::Backfill(args) => backfill_cmd(args),
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

fn backfill_cmd(args: BackfillArgs) -> CliResult {
    use callhook::backfill::{self, BackfillError, CdrTimezone, Destination, Options};

    let cfg = load(&args.config)?;
    let timezone = CdrTimezone::parse(&args.cdr_timezone).ok_or_else(|| {
        fail!(
            Code::Usage,
            "--cdr-timezone {:?}: write UTC, an offset such as +02:00 or -0300, or auto",
            args.cdr_timezone
        )
    })?;
    let pbx = match (&args.pbx, cfg.pbx.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, []) => "main".to_string(),
        (None, [one]) => one.id.clone(),
        (None, many) => {
            return Err(fail!(
                Code::Usage,
                "several PBXs are configured ({}): say which one wrote this CDR with --pbx",
                many.iter()
                    .map(|p| p.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    };
    let now = callhook::source::now_epoch();
    let bound = |v: &Option<String>, flag: &str| -> CliResult<Option<f64>> {
        v.as_deref()
            .map(|s| backfill::parse_bound(s, now, timezone.base()))
            .transpose()
            .map_err(|e| fail!(Code::Usage, "{flag}: {e}"))
    };
    let since = bound(&args.since, "--since")?;
    let until = bound(&args.until, "--until")?;
    let window = match &args.group_window {
        Some(w) => callhook::config::parse_duration(w)
            .ok_or_else(|| {
                fail!(
                    Code::Usage,
                    "--group-window {w:?} is not a duration (e.g. 4h)"
                )
            })?
            .as_secs_f64(),
        None => cfg.normalizer.max_call_age,
    };
    let stdin = args.cdr.as_os_str() == "-";
    let total_bytes = if stdin {
        None
    } else {
        std::fs::metadata(&args.cdr).ok().map(|m| m.len())
    };
    let opts = Options {
        pbx,
        timezone,
        since,
        until,
        window,
        max_open: backfill::DEFAULT_MAX_OPEN,
        progress: !args.no_progress,
        total_bytes,
        now,
        dedupe_window: cfg.outbox.dedupe_window.as_secs_f64(),
    };
    let input: Box<dyn std::io::BufRead> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.cdr)
            .code_with(Code::Input, || format!("opening {}", args.cdr.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let code = |e: BackfillError| -> cli::exit::Failure {
        let code = match &e {
            BackfillError::BeyondDedupeWindow { .. } => Code::Usage,
            BackfillError::Read { .. } => Code::Input,
            BackfillError::Write(_) | BackfillError::Outbox(_) => Code::Runtime,
        };
        cli::exit::Failure {
            code,
            error: e.into(),
        }
    };
    let classifier = &cfg.normalizer.classifier;
    let summary = if args.dry_run {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let dest = Destination::Print {
            out: &mut w,
            format: args.format.into(),
        };
        backfill::run(input, classifier, &cfg.rules, &opts, dest).map_err(code)?
    } else {
        // Without --deliver a daemon may be sending from this outbox: leave
        // its attempts in flight alone. With --deliver this process is the
        // sender and recovers what a crashed one left in flight.
        // --deliver sends: like a daemon, it holds the state_dir lock (a
        // daemon already sending from there is told about, not doubled).
        let lock = if args.deliver {
            Some(lock_for_sending(
                &cfg,
                "backfill --deliver",
                "run without --deliver",
            )?)
        } else {
            None
        };
        let open = if args.deliver {
            Outbox::open
        } else {
            Outbox::open_shared
        };
        let outbox = open(&cfg.state_dir, cfg.outbox.clone()).code_with(Code::Runtime, || {
            format!("opening the outbox in {}", cfg.state_dir.display())
        })?;
        let s = backfill::run(
            input,
            classifier,
            &cfg.rules,
            &opts,
            Destination::Outbox(&outbox),
        )
        .map_err(code)?;
        eprintln!("{s}");
        report_backfill(&args, &s, now, window);
        if args.deliver {
            cli::wait::deliver_until_idle(&cfg, outbox, args.timeout)?;
        } else {
            outbox.close();
            if s.queued > 0 && app::state_dir_in_use(&cfg.state_dir) {
                eprintln!(
                    "(the `callhook run` using {} delivers them within seconds)",
                    cfg.state_dir.display()
                );
            } else if s.queued > 0 {
                eprintln!(
                    "warning: no `callhook run` is using {} (its lock is free): the {} queued requests wait there until a daemon with this state_dir starts, or add --deliver. (Is state_dir the daemon's? A relative one depends on the working directory, and cron's is not the daemon's.)",
                    cfg.state_dir.display(),
                    s.queued
                );
            }
        }
        drop(lock);
        if s.failed > 0 {
            return Err(fail!(
                Code::Runtime,
                "{} requests failed (see above)",
                s.failed
            ));
        }
        return Ok(());
    };
    eprintln!("{summary}");
    report_backfill(&args, &summary, now, window);
    if summary.failed > 0 {
        return Err(fail!(
            Code::Runtime,
            "{} requests failed (see above)",
            summary.failed
        ));
    }
    Ok(())
}

/// The notes after a backfill's summary line.
fn report_backfill(
    args: &BackfillArgs,
    summary: &callhook::backfill::Summary,
    now: f64,
    window: f64,
) {
    use callhook::backfill;
    if summary.since_defaulted {
        if let Some(s) = summary.since {
            eprintln!(
                "(no --since: calls that ended in the last {}, as far back as the outbox remembers keys)",
                backfill::human_secs(now - s)
            );
        }
    }
    if summary.malformed > 0 {
        eprintln!(
            "{} malformed rows skipped{}:",
            summary.malformed,
            if summary.malformed as usize > summary.errors.len() {
                " (the first ones below, all in the log)"
            } else {
                ""
            }
        );
        for e in &summary.errors {
            eprintln!("  {}: {e}", args.cdr.display());
        }
    }
    if summary.timezone_mismatch > 0 {
        eprintln!(
            "warning: {} calls have uniqueids that put their CDR times at UTC{} rather than {}: check --cdr-timezone (or use --cdr-timezone auto)",
            summary.timezone_mismatch,
            summary.implied_offsets.iter().cloned().collect::<Vec<_>>().join(" / UTC"),
            args.cdr_timezone
        );
    }
    if summary.forced_groups > 0 || summary.late_rows > 0 {
        eprintln!(
            "warning: {} calls grouped early (too many open at once) and {} rows arrived after their call was done; raise --group-window if calls last longer than {}",
            summary.forced_groups,
            summary.late_rows,
            backfill::human_secs(window)
        );
    }
}

/// The state_dir lock for a one-shot command that sends from the outbox, so
/// that it never sends beside a daemon (which would hand out the same
/// deliveries twice).
fn lock_for_sending(cfg: &Config, what: &str, instead: &str) -> CliResult<std::fs::File> {
    match app::lock_state_dir(&cfg.state_dir) {
        Ok(f) => Ok(f),
        Err(app::AppError::Locked { dir }) => Err(fail!(
            Code::Runtime,
            "a callhook daemon (or another command) is sending from {}: {what} would send beside it; {instead}",
            dir.display()
        )),
        Err(e) => Err(e.into()),
    }
}

fn replay_cmd(
    captures: Vec<PathBuf>,
    config: Option<PathBuf>,
    dry_run: bool,
    format: Format,
    pbx: String,
    timeout: Option<Duration>,
) -> CliResult {
    let cfg = match &config {
        Some(p) => load(p)?,
        None => {
            init_logs(&LogSettings::default());
            Config::default_replay()
        }
    };
    let mut data = Vec::new();
    for c in &captures {
        data.push(std::fs::read(c).code_with(Code::Input, || format!("reading {}", c.display()))?);
    }
    // A file that is not an AMI capture (a pcap, a log, an empty file) would
    // replay as "no calls": say so instead.
    for (c, bytes) in captures.iter().zip(&data) {
        if replay::count_packets(bytes) == 0 {
            return Err(fail!(
                Code::Input,
                "{}: no AMI packets found ({} bytes): expected the raw bytes of an AMI connection (`Event: …` blocks separated by empty lines)",
                c.display(),
                bytes.len()
            ));
        }
    }
    let rules = cfg.rules.clone();
    let mut normalizer = Normalizer::new(cfg.normalizer.clone());
    let pbx: Arc<str> = pbx.into();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let mut requests: Vec<DeliveryRequest> = Vec::new();
    let with_rules = config.is_some();
    replay::replay(&data, &pbx, &mut normalizer, |ev| {
        if with_rules {
            let reqs = rules.evaluate(ev);
            if dry_run && write_err.is_none() {
                for r in &reqs {
                    if let Err(e) = replay::write_request(&mut w, r, format) {
                        write_err = Some(e);
                    }
                }
            }
            requests.extend(reqs);
        } else if write_err.is_none() {
            if let Err(e) = replay::write_event(&mut w, ev, format) {
                write_err = Some(e);
            }
        }
    });
    if let Some(e) = write_err {
        return Err(anyhow::Error::from(e).context("writing output").into());
    }
    w.flush()?;
    drop(w);
    if !with_rules || dry_run {
        return Ok(());
    }
    // Really send: through the outbox, until nothing is waiting. A replay
    // happens now: its requests count as fresh.
    let now = callhook::source::now_epoch();
    for r in &mut requests {
        r.rebase(now);
    }
    let n = requests.len();
    let _lock = lock_for_sending(
        &cfg,
        "replay --config",
        "stop it, use another state_dir, or use --dry-run",
    )?;
    let outbox = Outbox::open(&cfg.state_dir, cfg.outbox.clone())
        .code_with(Code::Runtime, || {
            format!("opening the outbox in {}", cfg.state_dir.display())
        })?;
    let outcome = runtime()?.block_on(outbox.submit(requests))?;
    eprintln!(
        "{n} requests: {} enqueued, {} already there (same idempotency key), {} refused (outbox full)",
        outcome.inserted, outcome.duplicates, outcome.rejected_full
    );
    cli::wait::deliver_until_idle(&cfg, outbox, timeout)
}

fn deliveries_cmd(args: DeliveriesArgs) -> CliResult {
    let Some(config) = args.config else {
        return Err(fail!(
            Code::Usage,
            "--config FILE (or CALLHOOK_CONFIG) is needed to find the outbox (state_dir)"
        ));
    };
    let cfg = load(&config)?;
    runtime()?.block_on(async move {
        // Shared: a running daemon's attempts in flight stay its own.
        let outbox = Outbox::open_shared(&cfg.state_dir, cfg.outbox.clone())
            .code_with(Code::Runtime, || {
                format!("opening the outbox in {}", cfg.state_dir.display())
            })?;
        let r = deliveries_action(&outbox, args.action).await;
        outbox.close();
        r
    })
}

async fn deliveries_action(outbox: &Outbox, action: DeliveriesAction) -> CliResult {
    let mut w = std::io::stdout().lock();
    match action {
        DeliveriesAction::List {
            dead,
            status,
            target,
            limit,
            json,
        } => {
            let status = if dead {
                Some(Status::Dead)
            } else {
                status.map(Status::from)
            };
            let rows = outbox
                .list(ListFilter {
                    status,
                    target,
                    limit,
                })
                .await?;
            let now = callhook::source::now_epoch();
            if json {
                for r in &rows {
                    writeln!(w, "{}", cli::deliveries::json(r, now)?)?;
                }
            } else if rows.is_empty() {
                writeln!(w, "no deliveries")?;
            } else {
                cli::deliveries::table(&mut w, &rows, now)?;
            }
        }
        DeliveriesAction::Retry { id, all_dead } => {
            if all_dead {
                let n = outbox.retry_all_dead().await?;
                writeln!(w, "{n} dead deliveries will be retried")?;
            } else if let Some(id) = id {
                if outbox.retry(id).await? {
                    writeln!(w, "delivery {id} will be retried")?;
                } else {
                    return Err(fail!(
                        Code::Runtime,
                        "delivery {id} not found, or not dead/expired"
                    ));
                }
            }
            writeln!(w, "(a running daemon picks them up within seconds)")?;
        }
    }
    Ok(())
}
