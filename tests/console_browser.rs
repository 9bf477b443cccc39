//! The agent console in a real headless Chromium (Debian `chromium` +
//! `chromium-driver`, installed by `.ci/run`), driven over WebDriver, while
//! the simulated PBX plays `queue-answered`: the call card shows the caller
//! on both agents' consoles, survives a page reload, turns into "answered by
//! 1002" on 1001's and "in call" on 1002's, disappears at the hang-up, and
//! the supervisor board shows the states; after a server restart every page
//! reconnects by itself (backoff, no reload).
//!
//! Where no browser is installed the test says so loudly and skips; under
//! CI (`CI` set) a missing browser is a failure.

mod support_daemon;
mod support_live;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator};
use serde_json::{json, Value};
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

fn find(names: &[&str]) -> Option<String> {
    for n in names {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"] {
            let p = format!("{dir}/{n}");
            if std::path::Path::new(&p).exists() {
                return Some(p);
            }
        }
    }
    None
}

struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Value {
    let mut r = http.request(method, url);
    if let Some(b) = body {
        r = r
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = r.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let bytes = resp.bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

struct Browser<'a> {
    d: &'a Driver,
    id: String,
}

impl Driver {
    async fn start(path: &str) -> Driver {
        let port = free_port();
        let child = Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let d = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d
            .http
            .get(format!("{}/status", d.base))
            .send()
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d
    }

    async fn browser(&self, chromium: &str, profile: &std::path::Path) -> Browser<'_> {
        let caps = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                     "--window-size=1000,760", format!("--user-data-dir={}", profile.display())]
        }}}});
        let v = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.base),
            Some(caps),
        )
        .await;
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        Browser { d: self, id }
    }
}

impl Browser<'_> {
    fn url(&self, p: &str) -> String {
        format!("{}/session/{}{p}", self.d.base, self.id)
    }

    async fn go(&self, url: &str) {
        call(
            &self.d.http,
            reqwest::Method::POST,
            &self.url("/url"),
            Some(json!({ "url": url })),
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        let v = call(
            &self.d.http,
            reqwest::Method::POST,
            &self.url("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
        .await;
        v["value"].clone()
    }

    /// Polls `script` until it returns `want`.
    async fn wait(&self, script: &str, want: Value, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let got = self.js(script).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: last {got}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, path: &std::path::Path) {
        use base64::Engine;
        let v = call(
            &self.d.http,
            reqwest::Method::GET,
            &self.url("/screenshot"),
            None,
        )
        .await;
        if let Some(b) = v["value"].as_str() {
            if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b) {
                let _ = std::fs::write(path, png);
            }
        }
    }

    async fn quit(self) {
        let _ = self.d.http.delete(self.url("")).send().await;
    }
}

const CARD: &str = "var c=document.getElementById('card'); return c.hidden ? 'hidden' : document.getElementById('card-number').textContent;";
const CARD_STATUS: &str = "var c=document.getElementById('card'); return c.hidden ? 'hidden' : document.getElementById('card-status').textContent;";
const LIVE: &str = "return document.getElementById('conn').textContent;";

fn board(ext: &str) -> String {
    format!("var r=document.querySelector('#board tr[data-ext=\"{ext}\"] .state'); return r ? r.textContent : 'none';")
}

#[tokio::test]
async fn console_shows_the_screen_pop_and_the_board_in_chromium() {
    let (Some(chromium), Some(driver)) = (
        find(&["chromium", "chromium-browser"]),
        find(&["chromedriver"]),
    ) else {
        let msg = "\n\n*** SKIPPED console_browser: no chromium/chromedriver on this machine (apt-get install chromium chromium-driver; .ci/run installs them) ***\n\n";
        assert!(std::env::var_os("CI").is_none(), "{msg}");
        eprintln!("{msg}");
        return;
    };
    let sim = Simulator::new("amiuser", "amipass-1234")
        .gated()
        .speed(Some(0.5))
        .session(
            fixture("asterisk-20/queue-answered.ami"),
            AfterCapture::StayOpen,
        )
        .start()
        .await
        .unwrap();
    let dir = temp_dir("console-browser");
    let _ports = PORTS.lock().await;
    let port = free_port();
    let cfg = config(&dir, sim.local_addr().port(), port, "");
    let d = Daemon::start(&cfg, &dir, ENV);
    d.wait_http().await;
    sim.wait_for(|s| s.logins >= 1).await;
    let base = d.url("");
    let http = reqwest::Client::new();
    let ticket = |ext: &'static str| {
        let http = http.clone();
        let url = d.url("/v1/tickets");
        async move {
            let v = call(
                &http,
                reqwest::Method::POST,
                &url,
                Some(json!({"tenant": "main", "key": KEY, "extension": ext})),
            )
            .await;
            v["ticket"].as_str().unwrap().to_string()
        }
    };
    let drv = Driver::start(&driver).await;
    let b1 = drv.browser(&chromium, &dir.join("p1")).await;
    let b2 = drv.browser(&chromium, &dir.join("p2")).await;
    let sup = drv.browser(&chromium, &dir.join("p3")).await;
    b1.go(&format!("{base}/console?ticket={}", ticket("1001").await))
        .await;
    b2.go(&format!("{base}/console?ticket={}", ticket("1002").await))
        .await;
    // The supervisor logs in through the form (key → ticket).
    sup.go(&format!("{base}/console")).await;
    sup.wait(
        "return document.getElementById('login').hidden",
        json!(false),
        "login form",
    )
    .await;
    sup.js(&format!(
        "document.getElementById('login-tenant').value='main';document.getElementById('login-extension').value='999';document.getElementById('login-key').value='{KEY}';document.getElementById('login-button').click();return 1;"
    ))
    .await;
    for b in [&b1, &b2, &sup] {
        b.wait(LIVE, json!("live"), "connected").await;
    }
    sup.wait(
        "return document.getElementById('supervisor').hidden",
        json!(false),
        "board shown",
    )
    .await;

    sim.release();
    b1.wait(CARD, json!("5559876543"), "1001's card").await;
    b2.wait(CARD, json!("5559876543"), "1002's card").await;
    sup.wait(&board("1001"), json!("ringing"), "board 1001 ringing")
        .await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    b1.screenshot(&shots.join("console-agent.png")).await;
    sup.screenshot(&shots.join("console-supervisor.png")).await;
    // A reload keeps the card (ticket in sessionStorage, snapshot).
    b1.go(&format!("{base}/console")).await;
    b1.wait(LIVE, json!("live"), "reconnected after reload")
        .await;
    let after = b1.js(CARD).await;
    assert!(
        after == json!("5559876543") || after == json!("hidden"),
        "{after}"
    );
    // 1002 answers: "in call" there, "answered by 1002" (or already gone) on 1001's.
    b2.wait(CARD_STATUS, json!("In call"), "1002 in call").await;
    sup.wait(&board("1002"), json!("in use"), "board 1002 in use")
        .await;
    let s1 = b1.js(CARD_STATUS).await;
    assert!(
        s1 == json!("Answered by 1002") || s1 == json!("hidden"),
        "{s1}"
    );
    // The hang-up: both cards gone, the board idle, the call in 1002's history.
    b1.wait(CARD, json!("hidden"), "1001's card gone").await;
    b2.wait(CARD, json!("hidden"), "1002's card gone").await;
    sup.wait(&board("1002"), json!("idle"), "board 1002 idle")
        .await;
    b2.wait(
        "return document.querySelectorAll('#history li').length > 0",
        json!(true),
        "history",
    )
    .await;
    let h = b2
        .js("return document.getElementById('history').textContent")
        .await;
    assert!(h.as_str().unwrap_or("").contains("5559876543"), "{h}");
    // A server restart: every page notices, reconnects by itself with
    // backoff (no reload: the marker set now survives) and is live again.
    for b in [&b1, &b2, &sup] {
        b.js("window.__before_restart = 1; return 1;").await;
    }
    d.stop();
    for b in [&b1, &b2, &sup] {
        b.wait(LIVE, json!("reconnecting"), "the restart noticed")
            .await;
    }
    let d = Daemon::start(&cfg, &dir, ENV);
    d.wait_http().await;
    for b in [&b1, &b2, &sup] {
        b.wait(LIVE, json!("live"), "reconnected after the server restart")
            .await;
        assert_eq!(b.js("return window.__before_restart || 0;").await, json!(1));
    }
    sup.wait(
        "return document.getElementById('supervisor').hidden",
        json!(false),
        "board shown after the restart",
    )
    .await;
    for b in [b1, b2, sup] {
        b.quit().await;
    }
    d.stop();
}
