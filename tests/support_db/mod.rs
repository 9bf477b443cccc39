//! Real database servers for the SQL backfill tests: a private MariaDB and
//! a private PostgreSQL, each started once per test binary on 127.0.0.1 on
//! a free port, with its data in a fresh temporary directory, and stopped
//! (and the directory removed) when the test binary exits.
//!
//! They come from the Debian packages `mariadb-server` and `postgresql`
//! (`.ci/run` installs them). When a server is not installed: under CI
//! (`CI` set) the test fails, saying what to install; elsewhere it is
//! skipped with a loud message on stderr.
//!
//! As root (CI is), each server runs as an unprivileged user (`mysql` /
//! `postgres` when the packages created them, else `nobody`): PostgreSQL
//! refuses root, and a database server has no business being root. The
//! processes get SIGKILL if the test binary dies (PR_SET_PDEATHSIG, set
//! from a thread that lives as long as the process).
//!
//! Accounts: `admin` (everything, for loading tables) and `reader` (may
//! only read, what a backfill needs), passwords [`ADMIN_PASSWORD`] and
//! [`READER_PASSWORD`].
#![allow(dead_code)]

pub mod cdr;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::support_tmp::TestDir;

/// The admin accounts' password.
pub const ADMIN_PASSWORD: &str = "adm1n-Pw";
/// The read-only account's password (its characters need URL escaping).
pub const READER_PASSWORD: &str = "r3ad:er@pw/x";
/// The same, percent-encoded for a URL.
pub const READER_PASSWORD_IN_URL: &str = "r3ad%3Aer%40pw%2Fx";

/// Longest wait for a server to start (a loaded 2-core machine).
const START: Duration = Duration::from_secs(120);

/// A running server.
pub struct Db {
    /// 127.0.0.1 port.
    pub port: u16,
    /// `mysql` or `postgres`.
    pub scheme: &'static str,
}

impl Db {
    /// `SCHEME://USER@127.0.0.1:PORT/DB` (no password).
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("{}://{user}@127.0.0.1:{}/{db}", self.scheme, self.port)
    }

    /// The admin's URL, with its password.
    pub fn admin_url(&self, db: &str) -> String {
        format!(
            "{}://admin:{ADMIN_PASSWORD}@127.0.0.1:{}/{db}",
            self.scheme, self.port
        )
    }

    /// The reader's URL, with its password.
    pub fn reader_url(&self, db: &str) -> String {
        format!(
            "{}://reader:{READER_PASSWORD_IN_URL}@127.0.0.1:{}/{db}",
            self.scheme, self.port
        )
    }

    /// The database every server has (the admin's first connection).
    fn system_db(&self) -> &'static str {
        if self.scheme == "mysql" {
            "mysql"
        } else {
            "postgres"
        }
    }

    /// Creates a fresh database `name` (dropping one left by an earlier
    /// run of the same test binary) and returns it.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "{name}"
        );
        self.admin_exec(
            self.system_db(),
            &[
                format!("DROP DATABASE IF EXISTS {name}"),
                format!("CREATE DATABASE {name}"),
            ],
        )
        .await;
        name.to_string()
    }

    /// Runs `statements` as the admin in database `db`.
    pub async fn admin_exec(&self, db: &str, statements: &[String]) {
        use sqlx::Connection;
        let url = self.admin_url(db);
        if self.scheme == "mysql" {
            let mut c = retry(|| sqlx::MySqlConnection::connect(&url)).await;
            for s in statements {
                sqlx::raw_sql(s)
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            let _ = c.close().await;
        } else {
            let mut c = retry(|| sqlx::PgConnection::connect(&url)).await;
            for s in statements {
                sqlx::raw_sql(s)
                    .execute(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
            let _ = c.close().await;
        }
    }
}

/// Connects, retrying while the server is still starting up (PostgreSQL
/// listens before it accepts logins).
async fn retry<C, F: std::future::Future<Output = Result<C, sqlx::Error>>>(
    connect: impl Fn() -> F,
) -> C {
    let deadline = Instant::now() + START;
    loop {
        match connect().await {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("connecting as admin: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

struct Running {
    child: Child,
    dir: TestDir,
}

static RUNNING: Mutex<Vec<Running>> = Mutex::new(Vec::new());

extern "C" fn stop_all() {
    let Ok(mut all) = RUNNING.lock() else { return };
    for r in all.iter_mut() {
        let _ = r.child.kill();
        let _ = r.child.wait();
    }
    // Each `TestDir` removes its tree as it drops.
    all.clear();
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` on a thread that never exits, so that PR_SET_PDEATHSIG (which
/// fires when the *thread* that spawned a process ends) fires only when
/// the test process ends.
fn on_keeper<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    static KEEPER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let tx = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for job in rx {
                job();
            }
            // The senders live in a static: never reached.
            loop {
                std::thread::park();
            }
        });
        // SAFETY: registering a plain extern "C" function with no arguments.
        unsafe {
            libc::atexit(stop_all);
        }
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock()
        .unwrap()
        .send(Box::new(move || {
            // A failed start panics in the test that asked, not here (the
            // keeper lives on for the next one).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = rtx.send(r);
        }))
        .unwrap();
    match rrx.recv().unwrap() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Whether a server that is missing fails the test (CI) or skips it.
fn missing(what: &str, package: &str) -> Option<Db> {
    let msg = format!(
        "{what} is not installed (Debian package {package}; .ci/run installs it): the SQL backfill tests against it cannot run"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!! SKIPPED: {msg} !!!!!\n");
    None
}

/// The uid/gid a server runs as (None: as we are).
fn run_as(preferred: &str) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    for name in [preferred, "nobody"] {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; the result is copied at once.
        let pw = unsafe { libc::getpwnam(c.as_ptr()) };
        if !pw.is_null() {
            // SAFETY: non-null pointer from getpwnam.
            let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
            return Some((uid, gid));
        }
    }
    None
}

/// A command that runs as `user` (when root) and dies with the keeper.
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    c.stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(move || {
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // After the uid change (which clears it).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    c
}

fn chown_all(dir: &Path, user: Option<(u32, u32)>) {
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid)).unwrap();
    }
}

fn temp(name: &str, user: Option<(u32, u32)>) -> TestDir {
    let d = TestDir::new(name);
    chown_all(&d, user);
    d
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn find(candidates: &[&str]) -> Option<PathBuf> {
    for c in candidates {
        let p = PathBuf::from(c);
        if p.is_absolute() {
            if p.exists() {
                return Some(p);
            }
            continue;
        }
        if let Some(path) = std::env::var_os("PATH") {
            for d in std::env::split_paths(&path) {
                let f = d.join(c);
                if f.exists() {
                    return Some(f);
                }
            }
        }
    }
    None
}

/// Waits until something accepts TCP connections on `port`, or the
/// process exits (its log is then in the panic).
fn wait_listening(child: &mut Child, port: u16, log: &Path, what: &str) {
    let deadline = Instant::now() + START;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            panic!(
                "{what} not listening after {START:?}: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The private MariaDB (None: not installed, outside CI).
pub fn mariadb() -> Option<&'static Db> {
    static DB: OnceLock<Option<Db>> = OnceLock::new();
    DB.get_or_init(|| on_keeper(start_mariadb)).as_ref()
}

fn start_mariadb() -> Option<Db> {
    let server = find(&[
        "/usr/sbin/mariadbd",
        "/usr/sbin/mysqld",
        "mariadbd",
        "mysqld",
    ]);
    let install = find(&["mariadb-install-db", "mysql_install_db"]);
    let (Some(server), Some(install)) = (server, install) else {
        return missing("MariaDB", "mariadb-server");
    };
    let user = run_as("mysql");
    let dir = temp("mariadb", user);
    let data = dir.join("data");
    let out = command(&install, user)
        .args([
            "--no-defaults",
            &format!("--datadir={}", data.display()),
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mariadb-install-db: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let init = dir.join("init.sql");
    std::fs::write(
        &init,
        format!(
            "CREATE USER 'admin'@'%' IDENTIFIED BY '{ADMIN_PASSWORD}';\n\
             GRANT ALL PRIVILEGES ON *.* TO 'admin'@'%' WITH GRANT OPTION;\n\
             CREATE USER 'reader'@'%' IDENTIFIED BY '{READER_PASSWORD}';\n\
             GRANT SELECT ON *.* TO 'reader'@'%';\n"
        ),
    )
    .unwrap();
    chown_all(&init, user);
    for _ in 0..3 {
        let port = free_port();
        let log = dir.join("server.log");
        let mut child = command(&server, user)
            .args([
                "--no-defaults".to_string(),
                format!("--datadir={}", data.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--port={port}"),
                format!("--socket={}", dir.join("sock").display()),
                format!("--pid-file={}", dir.join("pid").display()),
                format!("--init-file={}", init.display()),
                "--skip-log-bin".into(),
                "--innodb-buffer-pool-size=32M".into(),
                "--innodb-flush-log-at-trx-commit=0".into(),
                "--skip-name-resolve".into(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_listening(&mut child, port, &log, "mariadbd");
        if child.try_wait().ok().flatten().is_some() {
            continue; // someone else took the port
        }
        RUNNING.lock().unwrap().push(Running { child, dir });
        return Some(Db {
            port,
            scheme: "mysql",
        });
    }
    panic!("mariadbd did not start on three free ports");
}

/// The private PostgreSQL (None: not installed, outside CI).
pub fn postgres() -> Option<&'static Db> {
    static DB: OnceLock<Option<Db>> = OnceLock::new();
    DB.get_or_init(|| on_keeper(start_postgres)).as_ref()
}

fn postgres_bin(name: &str) -> Option<PathBuf> {
    // Debian: /usr/lib/postgresql/VERSION/bin, the newest.
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join(name);
            p.exists().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).or_else(|| find(&[name]))
}

fn start_postgres() -> Option<Db> {
    let (Some(initdb), Some(server)) = (postgres_bin("initdb"), postgres_bin("postgres")) else {
        return missing("PostgreSQL", "postgresql");
    };
    let user = run_as("postgres");
    let dir = temp("postgres", user);
    let data = dir.join("data");
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, format!("{ADMIN_PASSWORD}\n")).unwrap();
    chown_all(&pwfile, user);
    let out = command(&initdb, user)
        .args(["-D".as_ref(), data.as_os_str()])
        .args([
            "-U",
            "admin",
            "-A",
            "scram-sha-256",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .env("TZ", "UTC")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..3 {
        let port = free_port();
        let log = dir.join("server.log");
        let mut child = command(&server, user)
            .args(["-D".as_ref(), data.as_os_str()])
            .args(["-c", "listen_addresses=127.0.0.1", "-p", &port.to_string()])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        wait_listening(&mut child, port, &log, "postgres");
        if child.try_wait().ok().flatten().is_some() {
            continue;
        }
        RUNNING.lock().unwrap().push(Running { child, dir });
        let db = Db {
            port,
            scheme: "postgres",
        };
        // The read-only account (MariaDB's comes from its --init-file):
        // it may connect to every database and read what it is granted.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(db.admin_exec(
            "postgres",
            &[format!(
                "CREATE ROLE reader LOGIN PASSWORD '{READER_PASSWORD}'"
            )],
        ));
        return Some(db);
    }
    panic!("postgres did not start on three free ports");
}
