//! Where the config is found and where its paths point: `CALLHOOK_CONFIG`
//! for every subcommand that reads a config, and `state_dir` relative to
//! the config file (default `callhook-data` beside it, or in systemd's
//! `$STATE_DIRECTORY`).

mod support_daemon;
mod support_tmp;

use std::path::Path;
use std::process::{Command, Output};

use support_daemon::temp_dir;

fn callhook(args: &[&str], cwd: &Path, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callhook"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("CALLHOOK_CONFIG")
        .env_remove("STATE_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_config(dir: &Path, state_dir: Option<&str>) -> std::path::PathBuf {
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/screen-pop.yaml");
    let path = dir.join("conf").join("callhook.yaml");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(
        &path,
        format!(
            "{}pbx: [{{ id: main, ami: {{ host: 127.0.0.1, port: 1, username: u, secret: s }} }}]\ninclude: [{}]\n",
            state_dir.map(|s| format!("state_dir: {s}\n")).unwrap_or_default(),
            rules.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn callhook_config_works_for_every_subcommand_that_reads_a_config() {
    let dir = temp_dir("env-config");
    let cfg = write_config(&dir, Some("data"));
    let env = [("CALLHOOK_CONFIG", cfg.as_path())];
    // check
    assert!(ok(&callhook(&["check"], &dir, &env)).contains(": ok ("));
    // replay --dry-run: the rules' requests, from the config named by the variable.
    let capture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/ami/asterisk-20/incoming-answered.ami");
    let out = ok(&callhook(
        &["replay", "--dry-run", capture.to_str().unwrap()],
        &dir,
        &env,
    ));
    assert!(out.contains("DbFind.aspx?pi=5551234567&ext=1001"), "{out}");
    // deliveries list: the outbox of that config's state_dir.
    assert!(ok(&callhook(&["deliveries", "list"], &dir, &env)).contains("no deliveries"));
    assert!(
        dir.join("conf/data").is_dir(),
        "state_dir beside the config"
    );
}

#[test]
fn state_dir_is_relative_to_the_config_file() {
    let dir = temp_dir("state-dir-rel");
    let elsewhere = temp_dir("state-dir-cwd");
    // Written: relative to the config file's directory, whatever the cwd.
    let cfg = write_config(&dir, Some("data"));
    ok(&callhook(
        &["deliveries", "--config", cfg.to_str().unwrap(), "list"],
        &elsewhere,
        &[],
    ));
    assert!(dir.join("conf/data/outbox.sqlite3").exists());
    assert!(!elsewhere.join("data").exists());
    // Unset: `callhook-data` beside the config file…
    let dir2 = temp_dir("state-dir-default");
    let cfg2 = write_config(&dir2, None);
    ok(&callhook(
        &["deliveries", "--config", cfg2.to_str().unwrap(), "list"],
        &elsewhere,
        &[],
    ));
    assert!(dir2.join("conf/callhook-data/outbox.sqlite3").exists());
    // … or in systemd's StateDirectory= when it is set.
    let state = temp_dir("state-dir-systemd");
    ok(&callhook(
        &["deliveries", "--config", cfg2.to_str().unwrap(), "list"],
        &elsewhere,
        &[("STATE_DIRECTORY", state.path())],
    ));
    assert!(state.join("callhook-data/outbox.sqlite3").exists());
    assert!(!elsewhere.join("callhook-data").exists());
}
