//! `callhook backfill`: the glue between the command line, the config, the
//! outbox and `callhook::backfill` (which does the work), and the notes
//! printed after its summary.

use callhook::app;
use callhook::backfill::{self, BackfillError, CdrTimezone, Destination, Options};
use callhook::deliver::outbox::Outbox;

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
        dedupe_window: cfg.outbox.dedupe_window.as_secs_f64(),
    };
    let input: Box<dyn std::io::BufRead> = if stdin {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(&args.cdr)
            .code_with(Code::Input, || format!("opening {}", args.cdr.display()))?;
        Box::new(std::io::BufReader::with_capacity(1 << 16, f))
    };
    let code = |e: BackfillError| -> Failure {
        let code = match &e {
            BackfillError::BeyondDedupeWindow { .. } => Code::Usage,
            BackfillError::Read { .. } => Code::Input,
            BackfillError::Write(_) | BackfillError::Outbox(_) => Code::Runtime,
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
        report(&args, &s, now, window);
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
    eprintln!("{summary}");
    report(&args, &summary, now, window);
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
fn report(args: &BackfillArgs, summary: &backfill::Summary, now: f64, window: f64) {
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
