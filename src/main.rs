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
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                let n =
                    |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
                println!(
                    "{}: ok ({}, {}, {})",
                    config.display(),
                    n(cfg.pbx.len(), "PBX"),
                    n(cfg.targets.len(), "target"),
                    n(cfg.rules.len(), "rule"),
                );
                Ok(())
            }
            Err(e) => {
                eprint!("{e}");
                std::process::exit(1);
            }
        },
        Command::Run { config, print } => {
            let cfg = load(&config)?;
            if cfg.pbx.is_empty() {
                bail!(
                    "{}: no PBX configured (add a `pbx:` entry)",
                    config.display()
                );
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
                bail!("--speed must be a positive number");
            }
            runtime()?.block_on(callhook::demo::run(speed))?;
            Ok(())
        }
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
    let mut data = Vec::new();
    for c in &captures {
        data.push(std::fs::read(c).with_context(|| format!("reading {}", c.display()))?);
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
    runtime()?.block_on(async move {
        let outbox = Arc::new(
            Outbox::open(&cfg.state_dir, cfg.outbox.clone())
                .map_err(|e| anyhow::anyhow!("opening the outbox in {}: {e}", cfg.state_dir.display()))?,
        );
        let outcome = outbox.submit(requests).await?;
        eprintln!(
            "{n} requests: {} enqueued, {} already there (same idempotency key), {} refused (outbox full)",
            outcome.inserted, outcome.duplicates, outcome.rejected_full
        );
        let (_tx, rx) = tokio::sync::watch::channel(cfg.targets.clone());
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

fn deliveries_cmd(args: DeliveriesArgs) -> anyhow::Result<()> {
    let Some(config) = args.config else {
        bail!("--config FILE is needed to find the outbox (state_dir)");
    };
    let cfg = load(&config)?;
    runtime()?.block_on(async move {
        let outbox = Outbox::open(&cfg.state_dir, cfg.outbox.clone()).map_err(|e| {
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
