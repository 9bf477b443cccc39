//! The `callhook` commands behind the argument parsing of `main.rs`:
//! exit statuses and error reports ([`exit`]), delivering until idle with
//! progress and the state_dir lock ([`wait`]), [`replay`], [`backfill`],
//! [`deliveries`] (and its table / JSON output), [`outbox`] check and
//! recover, shell completions and man
//! pages ([`generate`]). Part of the binary, not the
//! library (anyhow lives here, as in `main.rs`).

pub mod backfill;
pub mod deliveries;
pub mod exit;
pub mod generate;
pub mod outbox;
pub mod replay;
pub mod wait;
