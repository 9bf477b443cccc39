//! Pieces of the `callhook` command line that are not argument parsing:
//! exit statuses and error reports ([`exit`]), delivering until idle with
//! progress ([`wait`]), `deliveries list` output ([`deliveries`]), shell
//! completions and man pages ([`generate`]). Part of the binary, not the
//! library (anyhow lives here, as in `main.rs`).

pub mod deliveries;
pub mod exit;
pub mod generate;
pub mod wait;
