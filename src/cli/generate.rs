//! `callhook completions SHELL` and `callhook man`: generated from the
//! same clap definition as the parser, so they are never out of date.

use std::io::Write;
use std::path::Path;

use clap_complete::Shell;

/// Writes the completion script for `shell` to `w`.
pub fn completions(mut cmd: clap::Command, shell: Shell, w: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, w);
}

/// Writes the man page of `cmd` (section 1) to `w`.
pub fn man(cmd: clap::Command, w: &mut dyn Write) -> std::io::Result<()> {
    page(cmd).render(w)
}

fn page(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .date(callhook::build_info::DATE)
        .manual("callhook manual")
}

/// Writes `callhook.1` and one page per subcommand (`callhook-run.1`, …)
/// into `dir`; returns the files written.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    fn walk(
        cmd: clap::Command,
        dir: &Path,
        out: &mut Vec<std::path::PathBuf>,
    ) -> std::io::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
            walk(sub, dir, out)?;
        }
        out.push(page(cmd).generate_to(dir)?);
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, dir, &mut out)?;
    out.reverse();
    Ok(out)
}
