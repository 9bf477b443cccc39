//! The one wiring function: sources → normalizer → output (being written).
use crate::config::Config;
use crate::replay::Format;

/// Runs the daemon until SIGINT/SIGTERM.
pub async fn run(_cfg: Config, _format: Format) -> anyhow::Result<()> {
    Ok(())
}
