//! `callhook replay`: captures through the live code path; with a config,
//! the rules' requests printed (`--dry-run`) or sent through the outbox;
//! with `--presence`, the presence timeline instead. Calls are streamed from
//! the files; the presence timeline reads them whole.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use callhook::config::Config;
use callhook::deliver::outbox::Outbox;
use callhook::deliver::DeliveryRequest;
use callhook::logging::LogSettings;
use callhook::normalize::Normalizer;
use callhook::replay::{self, Format};

use super::exit::{fail, CliResult, Code, Coded};
use super::wait::{deliver_until_idle, lock_for_sending};
use crate::{init_logs, load, runtime};

/// Reads the captures, refusing files with no AMI packet.
fn read_captures(captures: &[PathBuf]) -> Result<Vec<Vec<u8>>, super::exit::Failure> {
    let mut data = Vec::new();
    for c in captures {
        data.push(std::fs::read(c).code_with(Code::Input, || format!("reading {}", c.display()))?);
    }
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
    Ok(data)
}

/// Runs `callhook replay --presence`: every presence event, then (text)
/// the table at the end. The config, when given, supplies `classify` and
/// `presence`.
pub fn run_presence(
    captures: Vec<PathBuf>,
    config: Option<PathBuf>,
    format: Format,
    pbx: String,
) -> CliResult {
    use callhook::presence::{self, PresenceTracker};
    let cfg = match &config {
        Some(p) => load(p)?,
        None => {
            init_logs(&LogSettings::default());
            Config::default_replay()
        }
    };
    let data = read_captures(&captures)?;
    let mut normalizer = Normalizer::new(cfg.normalizer.clone());
    let mut tracker = PresenceTracker::from_config(&cfg.presence, &cfg.normalizer);
    let pbx: Arc<str> = pbx.into();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut write_err = None;
    let jsonl = format == Format::Jsonl;
    presence::replay::replay(
        &data,
        &pbx,
        &mut normalizer,
        &mut tracker,
        presence::replay::ReplayOptions::default(),
        |ev| {
            if write_err.is_none() {
                if let Err(e) = presence::replay::write_event(&mut w, ev, jsonl) {
                    write_err = Some(e);
                }
            }
        },
    );
    if let Some(e) = write_err {
        return Err(anyhow::Error::from(e).context("writing output").into());
    }
    if !jsonl {
        if let Some(snap) = tracker.snapshot(&pbx) {
            writeln!(w, "# at the end:")?;
            for x in &snap.extensions {
                writeln!(w, "#   {:<8} {}", x.extension, x.human())?;
            }
        }
    }
    w.flush()?;
    Ok(())
}

/// Runs `callhook replay`.
pub fn run(
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
    // Captures are streamed, never read whole. A file that is not an AMI
    // capture (a pcap, a log, an empty file) would replay as "no calls":
    // say so before anything is printed.
    for c in &captures {
        let reading = || format!("reading {}", c.display());
        let f = std::fs::File::open(c).code_with(Code::Input, reading)?;
        let size = f.metadata().map(|m| m.len()).unwrap_or(0);
        if !replay::has_packets(std::io::BufReader::new(f)).code_with(Code::Input, reading)? {
            return Err(fail!(
                Code::Input,
                "{}: no AMI packets found ({size} bytes): expected the raw bytes of an AMI connection (`Event: …` blocks separated by empty lines)",
                c.display(),
            ));
        }
    }
    let mut files = Vec::new();
    for c in &captures {
        let f =
            std::fs::File::open(c).code_with(Code::Input, || format!("reading {}", c.display()))?;
        files.push((c.as_path(), f));
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
                    if let Err(e) =
                        replay::write_request_to(&mut w, r, cfg.targets.get(&r.target), format)
                    {
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
        return Err(fail!(Code::Input, "reading {e}"));
    }
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
    deliver_until_idle(&cfg, outbox, timeout)
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
