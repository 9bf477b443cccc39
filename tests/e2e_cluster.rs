//! Cluster mode end to end with real processes: a 3-node NATS JetStream
//! cluster, three `callhook run` instances, two simulated PBXs replaying
//! real captures of a call interrupted mid-way (`reconnect-before` then
//! `reconnect-after`: the second connection sees the call in the channel
//! snapshot and its hangup; or, for a call that ended while nobody owned
//! the PBX, an empty second connection), and a real HTTP sink.
//!
//! The instances start without PBXs; once every one of them counts the
//! same three settled members (ownership is stable), the PBXs are added by
//! a reload, so each PBX's first connection is its owner's and the
//! scripted sessions follow the handovers the tests cause.

mod support_daemon;
mod support_http;
mod support_nats;
mod support_tmp;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, SimSession, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{assert_success, fixture, free_port, temp_dir, Daemon};
use support_http::{Received, Reply, Sink};
use support_nats::NatsCluster;
use support_tmp::TestDir;

const USER: &str = "amiuser";
const SECRET: &str = "cluster-e2e-secret";
const TOKEN: &str = "cluster-admin-token";
const TEAM: &str = "team-token-1";
/// The takeover goal of the issue.
const TAKEOVER_GOAL: Duration = Duration::from_secs(15);

fn env() -> Vec<(&'static str, &'static str)> {
    vec![("E2E_AMI_SECRET", SECRET), ("E2E_ADMIN_TOKEN", TOKEN)]
}

const RULES: &str = r#"  - name: screen-pop
    when: { state: ringing, role: callee }
    target: crm
    url: "SINK/pop?session={{leg.session_id}}&ext=%EXTENSION%"
    idempotency_key: "pop-{{leg.leg_id}}"
  - name: call-log
    when: { scope: call, state: hungup }
    target: crm
    url: "SINK/calls"
    json: { id: "{{call.session_id}}", pbx: "{{call.pbx}}", duration: "{{call.duration}}" }
    idempotency_key: "call-{{call.pbx}}-{{call.session_id}}"
"#;

struct Site {
    nats: NatsCluster,
    sink: Sink,
    sims: Vec<(&'static str, SimulatorHandle)>,
    daemons: Vec<Option<Daemon>>,
    /// After `daemons`: removed once they are killed.
    dirs: Vec<TestDir>,
    listens: Vec<u16>,
}

/// What the PBX's second connection (the next owner's) sees.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The call still up in the channel snapshot, then its hangup.
    Continues,
    /// Nothing: the call ended while nobody owned the PBX.
    Ended,
}

async fn sim(v: &str, then: Then) -> SimulatorHandle {
    let mut s = Simulator::new(USER, SECRET).session(
        fixture(&format!("{v}/reconnect-before.ami")),
        AfterCapture::StayOpen,
    );
    s = match then {
        Then::Continues => s.session(
            fixture(&format!("{v}/reconnect-after.ami")),
            AfterCapture::StayOpen,
        ),
        Then::Ended => {
            s.sessions.push(SimSession::empty(AfterCapture::StayOpen));
            s
        }
    };
    s.start().await.unwrap()
}

fn config(site: &Site, i: usize, lease_ttl: &str, with_pbx: bool) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:{}\nstate_dir: {}\nadmin: {{ token: \"${{E2E_ADMIN_TOKEN}}\" }}\n",
        site.listens[i],
        site.dirs[i].join("state").display()
    );
    s.push_str(&format!(
        "cluster:\n  nats: {{ servers: {} }}\n  instance: inst-{i}\n  partitions: 16\n  lease_ttl: {lease_ttl}\n",
        site.nats.servers_yaml()
    ));
    s.push_str(if with_pbx { "pbx:\n" } else { "pbx: []\n" });
    for (id, sim) in site.sims.iter().filter(|_| with_pbx) {
        s.push_str(&format!(
            "  - id: {id}\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: \"${{E2E_AMI_SECRET}}\", ping_interval: 2s, ping_timeout: 2s, connect_timeout: 2s }}\n",
            sim.local_addr().port()
        ));
    }
    s.push_str(&format!(
        "push:\n  settle: 200ms\n  teams:\n    cc1: {{ token: \"{TEAM}\" }}\n"
    ));
    s.push_str("targets:\n  crm: { timeout: 2s, retry: { max_attempts: 50, initial_backoff: 100ms, max_backoff: 500ms } }\nrules:\n");
    s.push_str(&RULES.replace("SINK", &site.sink.url("")));
    s
}

impl Site {
    async fn start(name: &str, lease_ttl: &str) -> Site {
        Self::start_with(name, lease_ttl, Then::Continues).await
    }

    /// With `east`'s second connection as `east_then`.
    async fn start_with(name: &str, lease_ttl: &str, east_then: Then) -> Site {
        let nats = NatsCluster::start(name).await;
        let sink = Sink::start().await;
        let sims = vec![
            ("east", sim("asterisk-20", east_then).await),
            ("west", sim("asterisk-11", Then::Continues).await),
        ];
        let mut site = Site {
            nats,
            sink,
            sims,
            dirs: (0..3).map(|i| temp_dir(&format!("{name}-{i}"))).collect(),
            daemons: Vec::new(),
            listens: (0..3).map(|_| free_port()).collect(),
        };
        for i in 0..3 {
            let text = config(&site, i, lease_ttl, false);
            let d = Daemon::start(&text, &site.dirs[i], &env());
            site.daemons.push(Some(d));
        }
        for d in site.daemons.iter().flatten() {
            d.wait_http().await;
        }
        site.wait_settled(3).await;
        for i in 0..3 {
            std::fs::write(
                site.dirs[i].join("callhook.yaml"),
                config(&site, i, lease_ttl, true),
            )
            .unwrap();
            site.daemons[i].as_ref().unwrap().hup();
        }
        site
    }

    /// Waits until every running instance counts the same `n` settled
    /// members (the ones the assignment uses).
    async fn wait_settled(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut views = Vec::new();
            for i in 0..self.daemons.len() {
                if self.daemons[i].is_some() {
                    views.push(
                        self.readyz(i)
                            .await
                            .map(|v| v["cluster"]["settled"].clone()),
                    );
                }
            }
            let stable = views.iter().all(|v| {
                v.as_ref()
                    .and_then(|s| s.as_array())
                    .is_some_and(|a| a.len() == n)
                    && *v == views[0]
            });
            if stable {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "members never settled: {views:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `/readyz` of instance `i` (its cluster view).
    async fn readyz(&self, i: usize) -> Option<Value> {
        let d = self.daemons[i].as_ref()?;
        // Bounded: a stopped instance accepts connections but never answers.
        let r = reqwest::Client::new()
            .get(d.url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        serde_json::from_str(&r.text().await.ok()?).ok()
    }

    /// The instance (index) that owns `item` (`pbx:east`), as every live
    /// instance agrees, waiting until they do.
    async fn owner(&self, item: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            for i in 0..self.daemons.len() {
                if let Some(v) = self.readyz(i).await {
                    let owned = v["cluster"]["owned"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    if owned.iter().any(|o| o == item) {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "nobody owns {item}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The instance that owns `item` once ownership has settled: the same
    /// instance holds it, and every live instance names it as the holder,
    /// over several looks a few hundred milliseconds apart (no handover in
    /// flight).
    async fn stable_owner(&self, item: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        let mut same = 0;
        loop {
            let mut holders = Vec::new();
            let mut named = BTreeSet::new();
            for i in 0..self.daemons.len() {
                if let Some(v) = self.readyz(i).await {
                    let c = &v["cluster"];
                    if c["owned"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|o| o == item))
                    {
                        holders.push((i, c["instance"].clone()));
                    }
                    // Holders are named by member key (`/` written `-`).
                    named.insert(c["owners"][item].to_string().replace('/', "-"));
                }
            }
            let now = match holders.as_slice() {
                [(i, id)]
                    if named.len() == 1 && named.contains(&id.to_string().replace('/', "-")) =>
                {
                    Some(*i)
                }
                _ => None,
            };
            if now.is_some() && now == last {
                same += 1;
                if same >= 4 {
                    return now.unwrap_or_default();
                }
            } else {
                same = 0;
            }
            last = now;
            assert!(
                Instant::now() < deadline,
                "ownership of {item} never settled: {holders:?} {named:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    fn sim(&self, id: &str) -> &SimulatorHandle {
        &self.sims.iter().find(|(i, _)| *i == id).unwrap().1
    }
}

fn body(r: &Received) -> Value {
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// Requests by idempotency key: a key seen twice must have the same
/// webhook-id and body (a redelivery in the in-flight window).
fn by_key(got: &[Received]) -> BTreeMap<String, Vec<&Received>> {
    let mut m: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for r in got {
        m.entry(r.header("idempotency-key").unwrap_or_default())
            .or_default()
            .push(r);
    }
    for (k, rs) in &m {
        for r in rs {
            assert_eq!(r.header("webhook-id"), rs[0].header("webhook-id"), "{k}");
            assert_eq!(r.body, rs[0].body, "{k}");
        }
    }
    m
}

async fn wait_calls(sink: &Sink, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let calls = sink.for_path("/calls");
        let keys: BTreeSet<String> = calls
            .iter()
            .filter_map(|r| r.header("idempotency-key"))
            .collect();
        if keys.len() >= n {
            return sink.received();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} call records: {:#?}",
            keys.len(),
            sink.received()
                .iter()
                .map(|r| format!("{} {}", r.uri, String::from_utf8_lossy(&r.body)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the calls bucket holds a call in progress of `pbx` (its
/// owner committed it).
async fn wait_stored_call(nats: &NatsCluster, pbx: &str) {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(nats.client().await);
    let prefix = format!("{}.", callhook::cluster::names::token(pbx));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(kv) = js.get_key_value("callhook_calls").await {
            if let Ok(mut keys) = kv.keys().await {
                while let Some(Ok(k)) = keys.next().await {
                    if k.starts_with(&prefix) {
                        return;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no stored call of {pbx}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The push sessions of `team` the calls bucket holds: (session id, its
/// stored snapshot as JSON).
async fn stored_sessions(nats: &NatsCluster, team: &str) -> BTreeMap<String, Value> {
    use base64::Engine;
    use futures::StreamExt;
    let js = async_nats::jetstream::new(nats.client().await);
    let prefix = format!("{}.", callhook::cluster::names::token(team));
    let mut out = BTreeMap::new();
    let Ok(kv) = js.get_key_value("callhook_calls").await else {
        return out;
    };
    let Ok(mut keys) = kv.keys().await else {
        return out;
    };
    let mut mine = Vec::new();
    while let Some(Ok(k)) = keys.next().await {
        if k.starts_with(&prefix) {
            mine.push(k);
        }
    }
    for k in mine {
        if let Ok(Some(v)) = kv.get(&k).await {
            let env: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
            let snap = base64::engine::general_purpose::STANDARD
                .decode(env["state"].as_str().unwrap_or(""))
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
            if let (Some(s), Some(snap)) = (env["session"].as_str(), snap) {
                out.insert(s.to_string(), snap);
            }
        }
    }
    out
}

/// Pushes one astercc event of team cc1 to instance `i` until it is
/// accepted (see [`push_until_accepted`]).
async fn push_cc1(site: &Site, http: &reqwest::Client, i: usize, fields: &str) {
    let url = format!(
        "http://127.0.0.1:{}/v1/events/astercc?token={TEAM}",
        site.listens[i]
    );
    push_until_accepted(http, &url, fields).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_push_team_owner_mid_call_closes_every_call_once() {
    // Calls of team cc1 ring and are answered under the team's owner, which
    // is then killed; their hangups are pushed to the survivors. Only the
    // sessions the dead owner stored give the new owner their start and
    // answer: without them each hangup opens a call of its own (duration 0).
    let mut site = Site::start("c-pushkill", "10s").await;
    let owner = site.stable_owner("team:cc1").await;
    let others: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let http = reqwest::Client::new();
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 120;
    let sessions: Vec<String> = (0..6).map(|i| format!("920.{i}")).collect();
    let push = |s: &str, ev: &str, source: &str, at: u64| {
        format!(
            "sessionid={s}&event={ev}&source={source}&calltype=dialin&activenum=5551234&extension=1001&eventTime={at}"
        )
    };
    for (i, s) in sessions.iter().enumerate() {
        push_cc1(&site, &http, i % 3, &push(s, "ringing", "CALLEE", t0)).await;
        push_cc1(
            &site,
            &http,
            (i + 1) % 3,
            &push(s, "answer", "CALLEE", t0 + 2),
        )
        .await;
    }
    // Every call is in progress and stored as answered by the owner.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_sessions(&site.nats, "cc1").await;
        let answered = sessions
            .iter()
            .filter(|s| {
                stored
                    .get(*s)
                    .is_some_and(|v| v["session"]["answered_at"].is_number())
            })
            .count();
        if answered == sessions.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} of {} calls stored as answered: {stored:?}",
            sessions.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        site.sink.for_path("/calls").is_empty(),
        "a record before the hangups"
    );
    assert_eq!(site.owner("team:cc1").await, owner, "cc1 changed hands");
    let killed = Instant::now();
    site.daemons[owner].take().unwrap().kill9();
    // The hangups (both sides), to the survivors while nobody owns the team.
    for (i, s) in sessions.iter().enumerate() {
        let to = others[i % 2];
        push_cc1(&site, &http, to, &push(s, "hangup", "CALLEE", t0 + 30)).await;
        push_cc1(&site, &http, to, &push(s, "hangup", "CALLER", t0 + 30)).await;
    }
    let new_owner = site.owner("team:cc1").await;
    assert_ne!(new_owner, owner);
    let takeover = killed.elapsed();
    eprintln!("team cc1 owned again {takeover:?} after kill -9");
    assert!(takeover <= TAKEOVER_GOAL, "takeover took {takeover:?}");
    let deadline = Instant::now() + Duration::from_secs(90);
    let got = loop {
        let got = site.sink.received();
        let ids: BTreeSet<String> = got
            .iter()
            .filter(|r| r.path() == "/calls" && body(r)["pbx"] == "cc1")
            .map(|r| body(r)["id"].as_str().unwrap_or("").to_string())
            .collect();
        if ids.len() >= sessions.len() {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of 6 records: {ids:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "every record of the team delivered {:?} after the kill",
        killed.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = site.sink.received();
    assert!(all.len() >= got.len());
    let keys = by_key(&all);
    // (The PBXs' calls may close too: the dead instance may have owned one.)
    let records: Vec<&String> = keys.keys().filter(|k| k.starts_with("call-cc1-")).collect();
    assert_eq!(records.len(), sessions.len(), "{records:?}");
    for s in &sessions {
        let rs = &keys[&format!("call-cc1-{s}")];
        // Started at the ringing the dead owner stored, not at the hangup.
        let d = &body(rs[0])["duration"];
        let d = d
            .as_f64()
            .or_else(|| d.as_str().and_then(|d| d.parse().ok()))
            .unwrap_or(-1.0);
        assert!(
            (d - 30.0).abs() < 0.01,
            "{s}: duration {d}: {}",
            String::from_utf8_lossy(&rs[0].body)
        );
    }
    // A late write of a previous owner (its lease expired while a commit was
    // in flight) after the new owner loaded the team: the new owner writes
    // its stored calls again some time after the take, so the stale call is
    // not left for the owner after it.
    {
        use base64::Engine;
        let js = async_nats::jetstream::new(site.nats.client().await);
        let kv = js.get_key_value("callhook_calls").await.unwrap();
        let key = format!(
            "{}.{}",
            callhook::cluster::names::token("cc1"),
            callhook::cluster::names::digest(&["920.stale"], 12)
        );
        let env = serde_json::json!({
            "session": "920.stale",
            "state": base64::engine::general_purpose::STANDARD.encode(b"{}"),
        });
        kv.put(&key, serde_json::to_vec(&env).unwrap().into())
            .await
            .unwrap();
    }
    // Nothing of the team is left in the bucket once its calls are over.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = stored_sessions(&site.nats, "cc1").await;
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sessions left stored: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_pbx_owner_mid_call_hands_over_within_the_goal() {
    // east's call ends while nobody owns east: only the live call state the
    // dead owner stored lets the next owner close it (one record).
    let mut site = Site::start_with("c-kill", "10s", Then::Ended).await;
    // Both PBXs get an owner, which replays the first half of the call.
    let east = site.owner("pbx:east").await;
    site.owner("pbx:west").await;
    site.sim("east")
        .wait_for(|s| s.replays_completed >= 1)
        .await;
    assert_eq!(site.sim("east").logins(), 1, "east changed hands at start");
    // The call is in progress, and stored.
    wait_stored_call(&site.nats, "east").await;
    let killed = Instant::now();
    site.daemons[east].take().unwrap().kill9();
    // Another instance logs in to east (the second connection).
    site.sim("east").wait_for(|s| s.logins >= 2).await;
    let takeover = killed.elapsed();
    eprintln!("takeover of pbx east after kill -9: {takeover:?}");
    assert!(takeover <= TAKEOVER_GOAL, "takeover took {takeover:?}");
    let new_owner = site.owner("pbx:east").await;
    assert_ne!(new_owner, east);
    // east's call closed exactly once, from the restored state (the
    // login's snapshot is empty); west's is still up (its owner is alive).
    let got = wait_calls(&site.sink, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got2 = site.sink.received();
    assert!(got2.len() >= got.len());
    assert_eq!(records_by_pbx(&got2), BTreeMap::from([("east".into(), 1)]));
    // Per call order: its screen-pop before its record.
    let rec = got2
        .iter()
        .position(|r| r.path() == "/calls" && body(r)["pbx"] == "east");
    let pop = got2.iter().position(|r| r.path() == "/pop");
    assert!(pop.is_some() && pop < rec, "{pop:?} {rec:?}");
}

/// Call records per PBX, every idempotency key counted once (a copy sent
/// twice has the same key: `by_key` checks it is the same request).
fn records_by_pbx(all: &[Received]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (k, rs) in by_key(all) {
        if k.starts_with("call-") {
            let pbx = body(rs[0])["pbx"].as_str().unwrap_or("").to_string();
            *m.entry(pbx).or_default() += 1;
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_the_calls_in_progress_over() {
    // The owner of east stops (SIGTERM) mid-call: it commits its last
    // batch, releases its leases, and the next owner resumes the call from
    // the stored state and closes it once when it ends.
    let mut site = Site::start("c-term", "10s").await;
    let east = site.owner("pbx:east").await;
    site.sim("east")
        .wait_for(|s| s.replays_completed >= 1)
        .await;
    assert_eq!(site.sim("east").logins(), 1, "east changed hands at start");
    wait_stored_call(&site.nats, "east").await;
    let stopped = Instant::now();
    let (_, status, _) = site.daemons[east].take().unwrap().stop();
    assert!(status.success(), "{status:?}");
    site.sim("east").wait_for(|s| s.logins >= 2).await;
    eprintln!(
        "takeover of pbx east after a clean stop: {:?}",
        stopped.elapsed()
    );
    assert_ne!(site.owner("pbx:east").await, east);
    wait_calls(&site.sink, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all = site.sink.received();
    assert_eq!(records_by_pbx(&all), BTreeMap::from([("east".into(), 1)]));
    let keys = by_key(&all);
    for (k, rs) in keys.iter().filter(|(k, _)| k.starts_with("call-")) {
        assert_eq!(rs.len(), 1, "{k} sent {} times", rs.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_instance_gives_up_its_pbxs_and_sends_no_duplicates() {
    let site = Site::start("c-stop", "10s").await;
    let east = site.owner("pbx:east").await;
    site.sim("east")
        .wait_for(|s| s.replays_completed >= 1)
        .await;
    site.sink.wait_for(1).await;
    let pid = site.daemons[east].as_ref().unwrap().child.id().to_string();
    let signal = |s: &str| {
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    };
    // Stopped for longer than the lease: another instance takes east.
    signal("-STOP");
    site.sim("east").wait_for(|s| s.logins >= 2).await;
    eprintln!(
        "east owned by {east}, stopped; now east {}, west {}",
        site.owner("pbx:east").await,
        site.owner("pbx:west").await
    );
    wait_calls(&site.sink, 1).await;
    signal("-CONT");
    // It gives up what it owned (it sees the new owner's lease).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = site.readyz(east).await.unwrap_or(Value::Null);
        let owned = v["cluster"]["owned"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !owned.iter().any(|o| o == "pbx:east") && v["cluster"].is_object() {
            break;
        }
        assert!(Instant::now() < deadline, "still owns east: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let all = site.sink.received();
    assert_eq!(records_by_pbx(&all), BTreeMap::from([("east".into(), 1)]));
    let keys = by_key(&all);
    let calls: Vec<&String> = keys.keys().filter(|k| k.starts_with("call-")).collect();
    for k in calls {
        assert_eq!(keys[k].len(), 1, "{k} sent {} times", keys[k].len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_to_any_instance_are_delivered_once() {
    let site = Site::start("c-push", "10s").await;
    site.owner("team:cc1").await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    for i in 0..9 {
        let s = format!("900.{i}");
        let inst = i % 3;
        for ev in ["ringing", "answer", "hangup"] {
            let body = format!(
                "sessionid={s}&event={ev}&source=CALLEE&calltype=dialin&activenum=5551234&extension=100{inst}"
            );
            let url = format!(
                "http://127.0.0.1:{}/v1/events/astercc?token={TEAM}",
                site.listens[(inst + ev.len()) % 3]
            );
            let r = http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
            // A pusher retrying the same event: stored once.
            let r = http
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(v["duplicate"], true);
        }
        sessions.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = site.sink.for_path("/calls");
        let ids: BTreeSet<String> = got
            .iter()
            .map(|r| body(r)["id"].as_str().unwrap_or("").to_string())
            .collect();
        if ids.len() == sessions.len() {
            break;
        }
        assert!(Instant::now() < deadline, "{} of 9 records", ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = site.sink.received();
    let keys = by_key(&all);
    for s in &sessions {
        let k = format!("call-cc1-{s}");
        assert_eq!(keys.get(&k).map(Vec::len), Some(1), "{k}");
    }
    // The admin API of any instance answers in cluster mode.
    let r = http
        .get(format!("http://127.0.0.1:{}/api/outbox", site.listens[0]))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(v["pending"], 0, "{v}");
    // So does the CLI (it reads the streams, not a local outbox).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_callhook"))
        .args(["deliveries", "list", "--config"])
        .arg(site.dirs[1].join("callhook.yaml"))
        .envs(env())
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no deliveries");
}

/// Pushes one astercc event until an instance accepts it (a pusher retries
/// what was not answered 2xx); returns how long that took.
async fn push_until_accepted(http: &reqwest::Client, url: &str, body: &str) -> Duration {
    let t = Instant::now();
    loop {
        let r = http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_string())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        if r.as_ref().is_ok_and(|r| r.status().is_success()) {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "push never accepted: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server name of the deliveries stream's leader.
async fn stream_leader(nats: &NatsCluster, stream: &str) -> String {
    let js = async_nats::jetstream::new(nats.client().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            if let Ok(info) = s.info().await {
                if let Some(l) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                    return l;
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader for {stream}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nats_node_loses_no_accepted_event() {
    let mut site = Site::start("c-node", "10s").await;
    site.owner("team:cc1").await;
    let http = reqwest::Client::new();
    let mut sessions = Vec::new();
    let mut stall = Duration::ZERO;
    let mut killed = None;
    for i in 0..24 {
        if i == 6 {
            // The node leading the deliveries stream, the worst one to lose.
            let leader = stream_leader(&site.nats, "CALLHOOK_DELIVERIES").await;
            let n = site
                .nats
                .nodes
                .iter()
                .position(|n| n.name == leader)
                .unwrap();
            eprintln!("kill -9 of NATS node {leader} (deliveries stream leader)");
            site.nats.kill_node(n);
            killed = Some(Instant::now());
        }
        let s = format!("910.{i}");
        for (j, ev) in ["ringing", "answer", "hangup"].iter().enumerate() {
            let body = format!(
                "sessionid={s}&event={ev}&source=CALLEE&calltype=dialin&activenum=5551234&extension=1001"
            );
            let url = format!(
                "http://127.0.0.1:{}/v1/events/astercc?token={TEAM}",
                site.listens[(i + j) % 3]
            );
            stall = stall.max(push_until_accepted(&http, &url, &body).await);
        }
        sessions.push(s);
    }
    eprintln!("longest wait for an accepted push around the node loss: {stall:?}");
    // Every accepted call gets its record, within the engine's failover.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ids: BTreeSet<String> = site
            .sink
            .for_path("/calls")
            .iter()
            .map(|r| body(r)["id"].as_str().unwrap_or("").to_string())
            .collect();
        if sessions.iter().all(|s| ids.contains(s)) {
            break;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&String> = sessions.iter().filter(|s| !ids.contains(*s)).collect();
            let pops: Vec<String> = site
                .sink
                .for_path("/pop")
                .iter()
                .map(|r| r.uri.to_string())
                .collect();
            for d in site.daemons.iter().flatten() {
                let log: Vec<String> = d
                    .stderr()
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(String::from)
                    .collect();
                eprintln!("--- instance log (warnings):\n{}", log.join("\n"));
            }
            panic!(
                "{} of {} records; missing {missing:?}; pops {pops:?}",
                ids.len(),
                sessions.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let since = killed.map(|k| k.elapsed()).unwrap_or_default();
    eprintln!("every record delivered {since:?} after the kill");
    assert!(stall < Duration::from_secs(30), "pushes stalled {stall:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = site.sink.received();
    // A copy sent twice (an acknowledgement lost with the node) carries the
    // same webhook-id, body and key (`by_key` checks that).
    let keys = by_key(&all);
    let twice = sessions
        .iter()
        .filter(|s| keys.get(&format!("call-cc1-{s}")).map_or(0, Vec::len) > 1)
        .count();
    eprintln!(
        "{twice} of {} records sent twice (redelivery)",
        sessions.len()
    );
    for s in &sessions {
        assert!(keys.contains_key(&format!("call-cc1-{s}")), "{s}");
    }
}

/// The deliveries consumer `name` as the server sees it.
async fn consumer_info(
    c: &callhook::cluster::Cluster,
    name: &str,
) -> Option<async_nats::jetstream::consumer::Info> {
    let s = c.js.get_stream(c.names.deliveries_stream()).await.ok()?;
    s.consumer_info(name).await.ok()
}

/// Polls consumer `name` until `pred` holds (or `within` passes: false).
async fn wait_consumer(
    c: &callhook::cluster::Cluster,
    name: &str,
    within: Duration,
    pred: impl Fn(&async_nats::jetstream::consumer::Info) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if consumer_info(c, name).await.is_some_and(|i| pred(&i)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// For the hold tests: one NATS server, instance A (the real binary, which
/// the tests stop and continue) as the only dispatcher, and the library's
/// view of the cluster as another instance (B: it stores deliveries and,
/// once started, dispatches them too).
struct Held {
    _nats: NatsCluster,
    sink: Sink,
    a: Daemon,
    _dir: TestDir,
    b: callhook::cluster::Cluster,
    store: std::sync::Arc<callhook::cluster::store::ClusterStore>,
    target: &'static str,
    partitions: u32,
}

impl Held {
    async fn start(name: &str, partitions: u32, target: &'static str) -> Held {
        use callhook::cluster::{store::ClusterStore, Cluster, ClusterConfig};
        let nats = NatsCluster::start_n(name, 1).await;
        let sink = Sink::start().await;
        let dir = temp_dir(name);
        let text = format!(
            "listen: 127.0.0.1:{}\nstate_dir: {}\ncluster:\n  nats: {{ servers: {} }}\n  instance: held-a\n  replicas: 1\n  partitions: {partitions}\npbx: []\npush:\n  teams:\n    cc1: {{ token: \"{TEAM}\" }}\ntargets:\n  {target}\nrules: []\n",
            free_port(),
            dir.join("state").display(),
            nats.servers_yaml()
        );
        let a = Daemon::start(&text, &dir, &[]);
        a.wait_http().await;
        let mut cfg = ClusterConfig::new(nats.urls(), "held-b");
        cfg.replicas = 1;
        cfg.partitions = partitions;
        let b = Cluster::connect(cfg).await.expect("connect");
        let store = std::sync::Arc::new(ClusterStore::new(&b).await.unwrap());
        Held {
            _nats: nats,
            sink,
            a,
            _dir: dir,
            b,
            store,
            target,
            partitions,
        }
    }

    fn signal(&self, s: &str) {
        let pid = self.a.child.id().to_string();
        assert!(std::process::Command::new("kill")
            .args([s, &pid])
            .status()
            .unwrap()
            .success())
    }

    /// The consumer of the partition `session` falls in.
    fn consumer(&self, session: &str) -> String {
        let p = callhook::cluster::names::partition("main", session, self.partitions);
        self.b.names.delivery_consumer("crm", p)
    }

    async fn submit(&self, session: &str) {
        use callhook::deliver::store::DeliveryStore;
        let url = self.sink.url("/hook");
        self.store
            .submit(vec![support_http::request("crm", session, "ringing", &url)])
            .await
            .unwrap();
    }

    /// How many times `session`'s delivery reached the sink.
    fn sent(&self, session: &str) -> usize {
        let key = format!("{session}-ringing");
        self.sink
            .received()
            .iter()
            .filter(|r| r.header("idempotency-key").as_deref() == Some(key.as_str()))
            .count()
    }

    async fn wait_sent(&self, session: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.sent(session) < n {
            assert!(
                Instant::now() < deadline,
                "{session} sent {} times, not {n}",
                self.sent(session)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// B's dispatcher (stopped when the token is cancelled).
    fn dispatch_b(&self) -> (callhook::cluster::dispatch::ClusterDispatcher, CancelOnDrop) {
        let (targets, rx) = support_http::target_channel(self.target);
        let stop = tokio_util::sync::CancellationToken::new();
        let d = callhook::cluster::dispatch::spawn(
            self.b.clone(),
            self.store.clone(),
            rx,
            stop.clone(),
        );
        (
            d,
            CancelOnDrop {
                stop,
                _targets: targets,
            },
        )
    }

    /// While A is stopped holding `session`'s delivery: B's dispatcher
    /// gets it after the ack wait, sends and acknowledges it; then A is
    /// continued, and must not send it again.
    async fn b_sends_then_a_continues(&self, session: &str) {
        let (_b, _stop) = self.dispatch_b();
        self.wait_sent(session, 1).await;
        assert!(
            wait_consumer(
                &self.b,
                &self.consumer(session),
                Duration::from_secs(30),
                |i| { i.num_ack_pending == 0 && i.num_pending == 0 }
            )
            .await,
            "B never acknowledged {session}"
        );
        self.signal("-CONT");
        let lost = self.after_continue(session).await;
        assert_eq!(self.sent(session), 1, "{session} sent twice");
        assert!(lost >= 1.0);
    }

    /// After A was continued holding `session`'s delivery, which another
    /// instance has sent since: A either finds it does not hold it any
    /// more (counted) or sends it again (the bug). The count.
    async fn after_continue(&self, session: &str) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let lost = self
                .a
                .metric("callhook_cluster_lost_holds_total")
                .await
                .unwrap_or(0.0);
            if lost >= 1.0 || self.sent(session) > 1 {
                return lost;
            }
            assert!(
                Instant::now() < deadline,
                "A never looked at the delivery it held; its log:\n{}",
                self.a.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Stops a dispatcher when dropped (and keeps its targets' sender open).
struct CancelOnDrop {
    stop: tokio_util::sync::CancellationToken,
    _targets: tokio::sync::watch::Sender<support_http::Targets>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_a_stopped_instance_was_waiting_to_send_is_not_sent_again() {
    // A holds a delivery while it waits out a Retry-After pause of the
    // target (another call's answer asked for it); it is stopped. After the
    // ack wait JetStream hands the delivery to B, which sends it. When A
    // continues and its pause ends it must not send it too.
    let h = Held::start("c-held-wait", 2, "crm: { timeout: 2s }").await;
    // Two calls in different partitions.
    let x = "30000.1";
    let y = (2..100)
        .map(|i| format!("30000.{i}"))
        .find(|s| h.consumer(s) != h.consumer(x))
        .unwrap();
    h.sink
        .queue("/hook", [Reply::status(503).header("Retry-After", "20")]);
    h.submit(x).await;
    h.wait_sent(x, 1).await;
    // y reaches A, which holds it until the pause is over.
    h.submit(&y).await;
    assert!(
        wait_consumer(&h.b, &h.consumer(&y), Duration::from_secs(30), |i| {
            i.num_ack_pending == 1 && i.num_pending == 0
        })
        .await,
        "{y} never reached A"
    );
    assert_eq!(h.sent(&y), 0, "A sent {y} during the pause");
    h.signal("-STOP");
    h.b_sends_then_a_continues(&y).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_handed_to_a_stopped_instance_is_not_sent_again_when_it_continues() {
    // A's pull request is the only one waiting when a delivery is stored
    // while A is stopped: the server hands it to A, where it waits in the
    // socket. After the ack wait JetStream hands it to B, which sends it.
    // When A continues it reads it, must find out it is not its own any
    // more, and leave it.
    let h = Held::start("c-held-sock", 1, "crm: { timeout: 2s }").await;
    let consumer = h.consumer("30000.0");
    // (Should A's pull request expire in the instant between the look and
    // the stop, A gets the delivery once continued and sends it; the next
    // round tries again.)
    let mut session = None;
    for round in 0..3 {
        assert!(
            wait_consumer(&h.b, &consumer, Duration::from_secs(60), |i| i.num_waiting
                >= 1)
            .await,
            "A never pulled"
        );
        h.signal("-STOP");
        let s = format!("30000.{round}");
        h.submit(&s).await;
        let handed = wait_consumer(&h.b, &consumer, Duration::from_secs(8), |i| {
            i.num_ack_pending == 1 && i.num_pending == 0
        })
        .await;
        if handed {
            session = Some(s);
            break;
        }
        h.signal("-CONT");
        h.wait_sent(&s, 1).await;
    }
    let s = session.expect("the delivery never reached the stopped instance");
    h.b_sends_then_a_continues(&s).await;
}
