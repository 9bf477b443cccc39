//! `callhook backfill`: the glue between the command line, the config, the
//! outbox and `callhook::backfill` (which does the work), and the notes
//! printed after its summary.

use callhook::app;
use callhook::backfill::sql::{self, CursorReport, CursorUse, DbUrl, SqlSource, TableName};
use callhook::backfill::{self, BackfillError, CdrTimezone, Destination, Options, Summary};
use callhook::config::Config;
use callhook::deliver::outbox::Outbox;
use callhook::values::Secret;

use super::exit::{fail, CliResult, Code, Coded, Failure};
use super::wait::{deliver_until_idle, lock_for_sending};
use crate::{load, BackfillArgs};

/// Runs `callhook backfill`.
pub fn run(args: BackfillArgs) -> CliResult {
    let cfg = load(&args.config)?;
    let timezone = CdrTimezone::parse(&args.cdr_timezone).ok_or_else(|| {
        fail!(
            Code::Usage,
            "--cdr-timezone {:?}: write a time zone name such as America/Mexico_City, UTC, an offset such as +02:00 or -0300, or auto",
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
        Some(w) => callhook::values::parse_duration(w)
            .ok_or_else(|| {
                fail!(
                    Code::Usage,
                    "--group-window {w:?} is not a duration (e.g. 4h)"
                )
            })?
            .as_secs_f64(),
        None => cfg.normalizer.max_call_age,
    };
    let input = open_input(&args, &cfg)?;
    let total_bytes = match &input {
        Input::File { size, .. } => *size,
        Input::Table(..) => None,
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
        dedupe_window: cfg.outbox.dedupe_window.as_secs_f64(),
    };
    let code = |e: BackfillError| -> Failure {
        let code = match &e {
            BackfillError::BeyondDedupeWindow { .. } => Code::Usage,
            BackfillError::Read { .. } | BackfillError::Database { .. } => Code::Input,
            BackfillError::Write(_) | BackfillError::Outbox(_) | BackfillError::Cursor(_) => {
                Code::Runtime
            }
        };
        Failure {
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
        input
            .run(classifier, &cfg.rules, &opts, dest, true)
            .map_err(code)?
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
        let s = input
            .run(
                classifier,
                &cfg.rules,
                &opts,
                Destination::Outbox(&outbox),
                false,
            )
            .map_err(code)?;
        eprintln!("{}", s.0);
        report(&args, &input, &s, now, window);
        let s = s.0;
        if args.deliver {
            deliver_until_idle(&cfg, outbox, args.timeout)?;
        } else {
            outbox.close();
            if s.queued > 0 && app::state_dir_in_use(&cfg.state_dir) {
                eprintln!(
                    "(the `callhook run` using {} delivers them within seconds)",
                    cfg.state_dir.display()
                );
            } else if s.queued > 0 {
                eprintln!(
                    "warning: no `callhook run` is using {} (its lock is free): the {} queued requests wait there until a daemon with this state_dir starts, or add --deliver. (Is this the daemon's state_dir? Without an absolute one, a daemon under systemd uses $STATE_DIRECTORY, other processes the directory beside the config.)",
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
    eprintln!("{}", summary.0);
    report(&args, &input, &summary, now, window);
    let summary = summary.0;
    if summary.failed > 0 {
        return Err(fail!(
            Code::Runtime,
            "{} requests failed (see above)",
            summary.failed
        ));
    }
    Ok(())
}

/// Where the rows come from.
enum Input {
    /// A CDR file (`-`: stdin).
    File {
        path: std::path::PathBuf,
        size: Option<u64>,
    },
    /// A CDR table, and where its cursor is kept.
    Table(Box<SqlSource>, std::path::PathBuf),
}

impl Input {
    /// How the source is named in messages (never with a password).
    fn name(&self) -> String {
        match self {
            Input::File { path, .. } => path.display().to_string(),
            Input::Table(src, _) => src.shown(),
        }
    }

    /// Runs the backfill from this source.
    fn run(
        &self,
        classifier: &callhook::normalize::Classifier,
        rules: &callhook::rules::RuleSet,
        opts: &Options,
        dest: Destination<'_>,
        dry_run: bool,
    ) -> Result<(Summary, Option<CursorReport>), BackfillError> {
        match self {
            Input::File { path, .. } => {
                let read: Box<dyn std::io::BufRead> = if path.as_os_str() == "-" {
                    Box::new(std::io::stdin().lock())
                } else {
                    let f = std::fs::File::open(path).map_err(|source| BackfillError::Read {
                        line: 0,
                        source: std::io::Error::new(
                            source.kind(),
                            format!("opening {}: {source}", path.display()),
                        ),
                    })?;
                    Box::new(std::io::BufReader::with_capacity(1 << 16, f))
                };
                Ok((backfill::run(read, classifier, rules, opts, dest)?, None))
            }
            Input::Table(src, cursor) => {
                // A closed period, or --no-cursor: from --since, nothing
                // saved; a dry run reads the cursor but leaves it.
                let cursor_use = if opts.until.is_some() || cursor.as_os_str().is_empty() {
                    CursorUse::Off
                } else if dry_run {
                    CursorUse::Read(cursor.clone())
                } else {
                    CursorUse::ReadWrite(cursor.clone())
                };
                let (s, r) = sql::run(src, &cursor_use, classifier, rules, opts, dest)?;
                Ok((s, Some(r)))
            }
        }
    }
}

/// `--cdr FILE` or `--cdr-db URL` (with its table, columns, password).
fn open_input(args: &BackfillArgs, cfg: &Config) -> CliResult<Input> {
    let url = match (&args.cdr, &args.cdr_db) {
        (Some(_), Some(_)) => {
            return Err(fail!(
                Code::Usage,
                "give --cdr FILE or --cdr-db URL, not both (is CALLHOOK_CDR_DB set?)"
            ))
        }
        (None, None) => {
            return Err(fail!(
                Code::Usage,
                "say where the CDRs are: --cdr FILE (Master.csv, - for stdin) or --cdr-db URL (mysql://… or postgres://…)"
            ))
        }
        (Some(path), None) => {
            let size = (path.as_os_str() != "-")
                .then(|| std::fs::metadata(path).ok().map(|m| m.len()))
                .flatten();
            if path.as_os_str() != "-" && !path.exists() {
                return Err(fail!(Code::Input, "opening {}: no such file", path.display()));
            }
            return Ok(Input::File {
                path: path.clone(),
                size,
            });
        }
        (None, Some(url)) => url,
    };
    let mut url = DbUrl::parse(url).map_err(|e| fail!(Code::Usage, "--cdr-db: {e}"))?;
    if !url.has_password() {
        if let Some(file) = &args.cdr_db_password_file {
            let (path, text) = callhook::values::read_secret_file(std::path::Path::new("."), file);
            let pw = text.code_with(Code::Input, || {
                format!("--cdr-db-password-file {}", path.display())
            })?;
            url = url.or_password(Secret::new(pw));
        } else if let Ok(pw) = std::env::var("CALLHOOK_CDR_DB_PASSWORD") {
            url = url.or_password(Secret::new(pw));
        }
    }
    let table = TableName::parse(args.cdr_table.as_deref().unwrap_or("cdr"))
        .map_err(|e| fail!(Code::Usage, "{e}"))?;
    let columns = sql::parse_overrides(&args.cdr_column).map_err(|e| fail!(Code::Usage, "{e}"))?;
    let settle = match &args.settle {
        Some(w) => callhook::values::parse_duration(w)
            .ok_or_else(|| fail!(Code::Usage, "--settle {w:?} is not a duration (e.g. 10m)"))?
            .as_secs_f64(),
        None => sql::DEFAULT_SETTLE,
    };
    let src = SqlSource {
        url,
        table,
        columns,
        settle,
    };
    let cursor = if args.no_cursor {
        std::path::PathBuf::new()
    } else {
        src.cursor_path(&cfg.state_dir)
    };
    Ok(Input::Table(Box::new(src), cursor))
}

/// The notes after a backfill's summary line.
fn report(
    args: &BackfillArgs,
    input: &Input,
    (summary, cursor): &(Summary, Option<CursorReport>),
    now: f64,
    window: f64,
) {
    if let Some(c) = cursor {
        if let Some(from) = &c.read_from {
            let how = if c.from_saved {
                "the saved cursor"
            } else {
                "--since"
            };
            let next = match &c.saved {
                Some(k) => format!("; the next run starts at {}", describe(k)),
                None => String::new(),
            };
            eprintln!("(rows read from {}, {how}{next})", describe(from));
        }
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
        let name = input.name();
        for e in &summary.errors {
            eprintln!("  {name}: {e}");
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

/// A cursor position for people: `start 2026-11-22 19:10:26, uniqueid …`.
fn describe(k: &sql::RowKey) -> String {
    if k.uniqueid.is_empty() {
        format!("start {}", k.start)
    } else {
        format!("start {}, uniqueid {}", k.start, k.uniqueid)
    }
}
