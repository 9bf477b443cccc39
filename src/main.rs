//! The `callhook` command line: thin glue over the library (anyhow lives here).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};

use callhook::config::Config;
use callhook::normalize::Normalizer;
use callhook::replay::{self, Format};

/// Turns Asterisk call events into one call model (and CRM webhooks).
#[derive(Parser, Debug)]
#[command(name = "callhook", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: connect to every configured PBX and print the call
    /// model as JSON lines on stdout (logs go to stderr).
    Run {
        /// Configuration file (YAML).
        #[arg(short, long, env = "CALLHOOK_CONFIG")]
        config: PathBuf,
        /// Output format of call events on stdout.
        #[arg(long, value_enum, default_value_t = OutFormat::Jsonl)]
        format: OutFormat,
    },
    /// Replay recorded AMI captures through the live code path and print the
    /// call model. Several captures are successive connections of one PBX
    /// (e.g. `reconnect-before.ami reconnect-after.ami`).
    Replay {
        /// Capture files (raw AMI bytes as received).
        #[arg(required = true)]
        captures: Vec<PathBuf>,
        /// Configuration file (for classification rules); defaults apply without it.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutFormat::Text)]
        format: OutFormat,
        /// PBX id to stamp on events.
        #[arg(long, default_value = "main")]
        pbx: String,
    },
    /// Validate a configuration file; prints every problem and exits non-zero
    /// when there is one.
    Check {
        /// Configuration file (YAML).
        #[arg(short, long)]
        config: PathBuf,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs();
    match cli.command {
        Command::Replay {
            captures,
            config,
            format,
            pbx,
        } => {
            let cfg = match config {
                Some(p) => Config::load(&p).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => Config::default_replay(),
            };
            let mut data = Vec::new();
            for c in &captures {
                data.push(std::fs::read(c).with_context(|| format!("reading {}", c.display()))?);
            }
            let mut normalizer = Normalizer::new(cfg.normalizer);
            let stdout = std::io::stdout();
            let mut w = std::io::BufWriter::new(stdout.lock());
            let mut write_err = None;
            let pbx: Arc<str> = pbx.into();
            let stats = replay::replay(&data, &pbx, &mut normalizer, |ev| {
                if write_err.is_none() {
                    if let Err(e) = replay::write_event(&mut w, ev, format.into()) {
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
            tracing::debug!(?stats, "replay finished");
            if normalizer.live_calls() > 0 {
                tracing::info!(
                    live = normalizer.live_calls(),
                    "calls still in progress at the end of the capture(s)"
                );
            }
            Ok(())
        }
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} PBX{})",
                    config.display(),
                    cfg.pbx.len(),
                    if cfg.pbx.len() == 1 { "" } else { "s" }
                );
                Ok(())
            }
            Err(e) => {
                eprint!("{e}");
                std::process::exit(1);
            }
        },
        Command::Run { config, format } => {
            let cfg = Config::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            if cfg.pbx.is_empty() {
                bail!(
                    "{}: no PBX configured (add a `pbx:` entry)",
                    config.display()
                );
            }
            let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
            rt.block_on(callhook::app::run(cfg, format.into()))?;
            Ok(())
        }
    }
}
