//! Scale: 200 simulated PBXs (one simulator per port, all in this test
//! process) over three `callhook` instances on a 3-node NATS cluster.
//! Ownership is balanced (⌈200/3⌉ at most each), every PBX is logged in
//! exactly once, and the memory an instance spends per owned PBX
//! connection is measured (RSS after a reload from 1 to 200 PBXs, divided
//! by the PBXs it took).

mod support_daemon;
mod support_http;
mod support_nats;

use std::time::{Duration, Instant};

use callhook::ami::simulator::{AfterCapture, Simulator, SimulatorHandle};
use serde_json::Value;
use support_daemon::{free_port, temp_dir, Daemon};
use support_nats::NatsCluster;

const USER: &str = "amiuser";
const SECRET: &str = "scale-secret";
const PBXS: usize = 200;

fn config(
    nats: &NatsCluster,
    listen: u16,
    dir: &std::path::Path,
    i: usize,
    sims: &[SimulatorHandle],
) -> String {
    let mut s = format!(
        "listen: 127.0.0.1:{listen}\nstate_dir: {}\ncluster:\n  nats: {{ servers: {} }}\n  instance: scale-{i}\n  partitions: 4\npbx:\n",
        dir.join("state").display(),
        nats.servers_yaml()
    );
    for (n, sim) in sims.iter().enumerate() {
        s.push_str(&format!(
            "  - id: pbx-{n:03}\n    ami: {{ host: 127.0.0.1, port: {}, username: {USER}, secret: {SECRET}, ping_interval: 30s, connect_timeout: 5s }}\n",
            sim.local_addr().port()
        ));
    }
    s.push_str("targets:\n  crm: {}\nrules: []\n");
    s
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

async fn owned(listen: u16) -> Option<usize> {
    let r = reqwest::get(format!("http://127.0.0.1:{listen}/readyz"))
        .await
        .ok()?;
    let v: Value = serde_json::from_str(&r.text().await.ok()?).ok()?;
    Some(
        v["cluster"]["owned"]
            .as_array()?
            .iter()
            .filter(|o| o.as_str().is_some_and(|s| s.starts_with("pbx:")))
            .count(),
    )
}

async fn counts(listens: &[u16]) -> Vec<usize> {
    let mut v = Vec::new();
    for l in listens {
        v.push(owned(*l).await.unwrap_or(0));
    }
    v
}

/// Waits until `total` items are owned and spread as evenly as the
/// assignment allows (at most ⌈total/3⌉ each, at least that minus 3).
async fn wait_owned(listens: &[u16], total: usize) -> Vec<usize> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let cap = total.div_ceil(listens.len());
    loop {
        let v = counts(listens).await;
        let balanced = total < listens.len() || v.iter().all(|c| *c <= cap && *c + 3 >= cap);
        if v.iter().sum::<usize>() == total && balanced {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "owned {v:?}, want {total} in all"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pbxs_spread_evenly_over_three_instances() {
    let nats = NatsCluster::start("scale").await;
    let mut sims = Vec::new();
    for _ in 0..PBXS {
        sims.push(
            Simulator::new(USER, SECRET)
                .session(Vec::new(), AfterCapture::StayOpen)
                .start()
                .await
                .unwrap(),
        );
    }
    let listens: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let dirs: Vec<_> = (0..3).map(|i| temp_dir(&format!("scale-{i}"))).collect();
    // First with one PBX, to measure the memory of an instance without.
    let mut daemons = Vec::new();
    for i in 0..3 {
        daemons.push(Daemon::start(
            &config(&nats, listens[i], &dirs[i], i, &sims[..1]),
            &dirs[i],
            &[],
        ));
    }
    for d in &daemons {
        d.wait_http().await;
    }
    wait_owned(&listens, 1).await;
    let before: Vec<u64> = daemons.iter().map(|d| rss_kib(d.child.id())).collect();
    // Then all of them, by a reload.
    for (i, d) in daemons.iter().enumerate() {
        std::fs::write(
            dirs[i].join("callhook.yaml"),
            config(&nats, listens[i], &dirs[i], i, &sims),
        )
        .unwrap();
        d.hup();
    }
    let t = Instant::now();
    let counts = wait_owned(&listens, PBXS).await;
    eprintln!("ownership {counts:?} after {:?}", t.elapsed());
    // No flapping: the assignment stays put over several renewals.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        self::counts(&listens).await,
        counts,
        "ownership moved again"
    );
    // Every PBX logged in, each by one instance.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sims.iter().any(|s| s.logins() == 0) {
        assert!(Instant::now() < deadline, "not every PBX logged in");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Exactly one connection per PBX (a PBX handed over while the
    // instances reloaded one after the other logged in twice, one after
    // the other).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: Vec<usize> = sims
            .iter()
            .map(|s| {
                let st = s.stats();
                st.connections - st.closed
            })
            .collect();
        if open.iter().all(|n| *n == 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "open connections per PBX: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let handed = sims.iter().filter(|s| s.logins() > 1).count();
    eprintln!("{handed} PBXs changed hands during the rolling reload");
    let after: Vec<u64> = daemons.iter().map(|d| rss_kib(d.child.id())).collect();
    let grown: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let per = grown as f64 / (PBXS - 1) as f64;
    eprintln!("RSS before {before:?} KiB, after {after:?} KiB: {per:.0} KiB per PBX connection");
    // A PBX connection (client task, read buffer, normalizer tables,
    // leases) costs well under a megabyte.
    assert!(per < 1024.0, "{per:.0} KiB per PBX");
}
