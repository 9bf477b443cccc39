//! `callhook outbox check|recover`: reports damage in `outbox.sqlite3`
//! (safe while the daemon runs), or copies what is readable into a fresh
//! file under the state directory's lock.

use callhook::deliver::outbox::repair;

use super::exit::{fail, CliResult, Code};
use crate::{load_outbox, OutboxAction, OutboxArgs};

pub fn run(args: OutboxArgs) -> CliResult {
    let state_dir = match (args.state_dir, args.config) {
        (Some(d), _) => d,
        (None, Some(c)) => load_outbox(&c)?.state_dir,
        (None, None) => {
            return Err(fail!(
                Code::Usage,
                "--config FILE or --state-dir DIR is needed to find the outbox"
            ))
        }
    };
    match args.action {
        OutboxAction::Check => {
            let r = repair::check(&state_dir)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!("{}: {} deliveries read", r.path.display(), r.rows);
                for l in &r.integrity {
                    println!("integrity: {l}");
                }
                for (id, why) in &r.undecodable {
                    println!("delivery {id} cannot be decoded: {why}");
                }
                for id in &r.unreadable {
                    println!("delivery {id} cannot be read");
                }
                if r.ok() {
                    println!("ok");
                }
            }
            if !r.ok() {
                return Err(fail!(
                    Code::Runtime,
                    "{} is damaged: stop callhook and run `callhook outbox recover` on this state directory",
                    r.path.display()
                ));
            }
            Ok(())
        }
        OutboxAction::Recover => {
            let _lock = callhook::app::lock_state_dir(&state_dir)?;
            let r = repair::recover(&state_dir)?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "recovered: {} deliveries copied, {} damaged ones kept as dead, {} unreadable (lost), {} idempotency keys{}, {} live calls",
                    r.copied,
                    r.damaged,
                    r.lost,
                    r.keys,
                    if r.keys_incomplete { " (some unreadable)" } else { "" },
                    r.live_calls
                );
                println!("the damaged file is kept as {}", r.moved_to.display());
            }
            Ok(())
        }
    }
}
