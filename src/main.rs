//! The `callhook` command line: thin glue over the library (anyhow lives here).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use callhook::app::{self, RunOptions};
use callhook::config::Config;
use callhook::deliver::outbox::{ListFilter, Outbox, Status};
use callhook::deliver::DeliveryRequest;
use callhook::model::ModelEvent;
use callhook::normalize::Normalizer;
use callhook::replay::{self, Format};

/// Turns Asterisk call events into one call model and CRM webhooks.
#[derive(Parser, Debug)]
#[command(name = "callhook", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
  callhook backfill --cdr Master.csv --config callhook.yaml --since 2026-11-01 --until 2026-12-01 --dry-run
  zcat Master.csv.1.gz | callhook backfill --cdr - --config callhook.yaml --cdr-timezone auto";

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
    /// Time zone of the CDR times: an IANA name (`America/Mexico_City`,
    /// daylight saving applied to every time), `UTC` (also right with
    /// `usegmtime=yes`), an offset (`+02:00`, `-0300`), or `auto`: each
    /// call's offset from its uniqueid (`auto:Europe/Madrid` sets the zone
    /// for ids that do not tell).
    #[arg(
        long,
        value_name = "ZONE|OFFSET|auto",
        default_value = "UTC",
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
        /// Only this state: pending, inflight, done, dead, expired.
        #[arg(long, conflicts_with = "dead")]
        status: Option<String>,
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

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CALLHOOK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Loads a configuration for `run`: what `check` accepts, warnings logged.
fn load_daemon(path: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = load(path)?;
    let errors = cfg.daemon_errors();
    if !errors.is_empty() {
        let e = callhook::config::ConfigErrors {
            file: path.to_path_buf(),
            errors,
            warnings: Vec::new(),
        };
        bail!("{e}");
    }
    for w in cfg.daemon_warnings() {
        tracing::warn!("{}", w.render(path));
    }
    Ok(cfg)
}

/// `check`: every error and warning, exit 1 on an error (what `run` would refuse).
fn check_cmd(config: &std::path::Path) -> anyhow::Result<()> {
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
                eprint!("{e}");
                print_warnings(&warnings);
                std::process::exit(1);
            }
            let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
            println!(
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
            );
            print_warnings(&warnings);
            Ok(())
        }
        Err(e) => {
            eprint!("{e}");
            print_warnings(&e.warnings);
            std::process::exit(1);
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the runtime")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs();
    match cli.command {
        Command::Replay {
            captures,
            config,
            dry_run,
            format,
            pbx,
        } => replay_cmd(captures, config, dry_run, format.into(), pbx),
        Command::Check { config } => check_cmd(&config),
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
        Command::Deliveries(args) => deliveries_cmd(args),
        Command::Test { files } => test_cmd(&files),
        Command::Demo { speed } => {
            if !(speed.is_finite() && speed > 0.0) {
                bail!("--speed must be a positive number");
            }
            runtime()?.block_on(callhook::demo::run(speed))?;
            Ok(())
        }
        Command::Backfill(args) => backfill_cmd(args),
    }
}

/// `test`: runs every file, prints each case, exits 1 on any failure.
fn test_cmd(files: &[PathBuf]) -> anyhow::Result<()> {
    let (mut passed, mut failed, mut broken) = (0, 0, 0);
    for f in files {
        let r = callhook::ruletest::run_file(f);
        print!("{}", r.render());
        broken += usize::from(!r.errors.is_empty());
        for c in &r.cases {
            if c.failures.is_empty() {
                passed += 1;
            } else {
                failed += 1;
            }
        }
    }
    println!(
        "{passed} passed, {failed} failed{}",
        if broken > 0 {
            format!(
                " ({broken} file{} could not run)",
                if broken == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    );
    if failed > 0 || broken > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn backfill_cmd(args: BackfillArgs) -> anyhow::Result<()> {
    use callhook::backfill::{self, CdrTimezone, Destination, Options};

    let cfg = load(&args.config)?;
    let timezone = CdrTimezone::parse(&args.cdr_timezone).with_context(|| {
        format!(
            "--cdr-timezone {:?}: write a time zone name such as America/Mexico_City, UTC, an offset such as +02:00 or -0300, or auto",
            args.cdr_timezone
        )
    })?;
    let pbx = match (&args.pbx, cfg.pbx.as_slice()) {
        (Some(p), _) => p.clone(),
        (None, []) => "main".to_string(),
        (None, [one]) => one.id.clone(),
        (None, many) => bail!(
            "several PBXs are configured ({}): say which one wrote this CDR with --pbx",
            many.iter()
                .map(|p| p.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let now = callhook::source::now_epoch();
    let bound = |v: &Option<String>, flag: &str| -> anyhow::Result<Option<f64>> {
        v.as_deref()
            .map(|s| backfill::parse_bound(s, now, timezone.base()))
            .transpose()
            .with_context(|| flag.to_string())
    };
    let since = bound(&args.since, "--since")?;
    let until = bound(&args.until, "--until")?;
    let window = match &args.group_window {
        Some(w) => callhook::values::parse_duration(w)
            .with_context(|| format!("--group-window {w:?} is not a duration (e.g. 4h)"))?
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
        timezone: timezone.clone(),
        since,
        until,
        window,
        max_open: backfill::DEFAULT_MAX_OPEN,
        progress: !args.no_progress,
        total_bytes,
        now,
    };
    let input: Box<dyn std::io::BufRead> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.cdr)
            .with_context(|| format!("opening {}", args.cdr.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let classifier = &cfg.normalizer.classifier;
    let summary = if args.dry_run {
        let stdout = std::io::stdout();
        let mut w = std::io::BufWriter::new(stdout.lock());
        let dest = Destination::Print {
            out: &mut w,
            format: args.format.into(),
        };
        match backfill::run(input, classifier, &cfg.rules, &opts, dest) {
            Ok(s) => s,
            Err(backfill::BackfillError::Write(e))
                if e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        // Without --deliver a daemon may be sending from this outbox: leave
        // its attempts in flight alone. With --deliver this process is the
        // sender and recovers what a crashed one left in flight.
        let open = if args.deliver {
            Outbox::open
        } else {
            Outbox::open_shared
        };
        let outbox = open(&cfg.state_dir, cfg.outbox.clone()).map_err(|e| {
            anyhow::anyhow!("opening the outbox in {}: {e}", cfg.state_dir.display())
        })?;
        let s = backfill::run(
            input,
            classifier,
            &cfg.rules,
            &opts,
            Destination::Outbox(&outbox),
        )?;
        if args.deliver {
            eprintln!("{s}");
            deliver_until_idle(&cfg, outbox)?;
        } else {
            outbox.close();
        }
        s
    };
    if !args.deliver {
        eprintln!("{summary}");
    }
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
            timezone
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
    if !args.dry_run && !args.deliver && summary.queued > 0 {
        eprintln!("(a running `callhook run` delivers them; or add --deliver)");
    }
    if summary.failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs a dispatcher on the outbox until nothing is waiting (or Ctrl-C).
fn deliver_until_idle(cfg: &Config, outbox: Outbox) -> anyhow::Result<()> {
    let targets = cfg.targets.clone();
    runtime()?.block_on(async move {
        let outbox = Arc::new(outbox);
        let (_tx, rx) = tokio::sync::watch::channel(targets);
        let token = tokio_util::sync::CancellationToken::new();
        let d = callhook::deliver::spawn(outbox.clone(), rx, token.clone());
        loop {
            let s = outbox.stats().await?;
            if s.pending + s.inflight == 0 {
                eprintln!("done: {} delivered, {} dead, {} expired", s.done, s.dead, s.expired);
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = tokio::signal::ctrl_c() => {
                    eprintln!("interrupted: {} still waiting in the outbox", s.pending + s.inflight);
                    break;
                }
            }
        }
        token.cancel();
        d.stopped().await;
        outbox.close();
        Ok::<(), anyhow::Error>(())
    })
}

/// A capture file whose read errors name it.
struct Named<'a> {
    file: &'a std::fs::File,
    path: &'a std::path::Path,
}

impl std::io::Read for Named<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file
            .read(buf)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", self.path.display())))
    }
}

fn replay_cmd(
    captures: Vec<PathBuf>,
    config: Option<PathBuf>,
    dry_run: bool,
    format: Format,
    pbx: String,
) -> anyhow::Result<()> {
    let cfg = match &config {
        Some(p) => load(p)?,
        None => Config::default_replay(),
    };
    // Opened up front (a missing file fails before anything is printed),
    // then streamed.
    let mut files = Vec::new();
    for c in &captures {
        let f = std::fs::File::open(c).with_context(|| format!("reading {}", c.display()))?;
        files.push((c, f));
    }
    let rules = cfg.rules.clone();
    let mut normalizer = Normalizer::new(cfg.normalizer.clone());
    let pbx: Arc<str> = pbx.into();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let mut requests: Vec<DeliveryRequest> = Vec::new();
    let with_rules = config.is_some();
    let readers = files.iter().map(|(path, file)| Named { file, path });
    let replayed = replay::replay_from(readers, &pbx, &mut normalizer, |ev| {
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
    if let Err(e) = replayed {
        bail!("reading {e}");
    }
    if let Some(e) = write_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            bail!("writing output: {e}");
        }
        return Ok(());
    }
    w.flush().ok();
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
    let outbox = Outbox::open(&cfg.state_dir, cfg.outbox.clone())
        .map_err(|e| anyhow::anyhow!("opening the outbox in {}: {e}", cfg.state_dir.display()))?;
    let outcome = runtime()?.block_on(outbox.submit(requests))?;
    eprintln!(
        "{n} requests: {} enqueued, {} already there (same idempotency key), {} refused (outbox full)",
        outcome.inserted, outcome.duplicates, outcome.rejected_full
    );
    deliver_until_idle(&cfg, outbox)
}

fn deliveries_cmd(args: DeliveriesArgs) -> anyhow::Result<()> {
    let Some(config) = args.config else {
        bail!("--config FILE is needed to find the outbox (state_dir)");
    };
    let cfg = load(&config)?;
    runtime()?.block_on(async move {
        // Shared: a running daemon's attempts in flight stay its own.
        let outbox = Outbox::open_shared(&cfg.state_dir, cfg.outbox.clone()).map_err(|e| {
            anyhow::anyhow!("opening the outbox in {}: {e}", cfg.state_dir.display())
        })?;
        match args.action {
            DeliveriesAction::List {
                dead,
                status,
                target,
                limit,
                json,
            } => {
                let status = match (dead, status) {
                    (true, _) => Some(Status::Dead),
                    (false, Some(s)) => Some(Status::parse(&s).with_context(|| {
                        format!("unknown status {s:?} (pending, inflight, done, dead, expired)")
                    })?),
                    (false, None) => None,
                };
                let rows = outbox
                    .list(ListFilter {
                        status,
                        target,
                        limit,
                    })
                    .await?;
                let stdout = std::io::stdout();
                let mut w = stdout.lock();
                for r in &rows {
                    if json {
                        writeln!(w, "{}", serde_json::to_string(r)?)?;
                    } else {
                        writeln!(
                            w,
                            "{:>6}  {:<8} {:<10} {:<16} att {:<2} last {:<8} {} {}",
                            r.id,
                            r.status.as_str(),
                            r.target,
                            r.rule,
                            r.attempts,
                            r.last_status.as_deref().unwrap_or("-"),
                            r.method,
                            r.url
                        )?;
                    }
                }
                if rows.is_empty() && !json {
                    writeln!(w, "no deliveries")?;
                }
            }
            DeliveriesAction::Retry { id, all_dead } => {
                if all_dead {
                    let n = outbox.retry_all_dead().await?;
                    println!("{n} dead deliveries will be retried");
                } else if let Some(id) = id {
                    if outbox.retry(id).await? {
                        println!("delivery {id} will be retried");
                    } else {
                        bail!("delivery {id} not found, or not dead/expired");
                    }
                }
                println!("(a running daemon picks them up within seconds)");
            }
        }
        outbox.close();
        Ok(())
    })
}
