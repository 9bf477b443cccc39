//! Guessing credentials: after `auth_failures_per_ip` wrong credentials from
//! one address, on any live surface (HTTP routes, `/v1/tickets`, the
//! WebSocket and SSE streams, the Meetip login), that address is refused
//! everywhere with `429` + `Retry-After` (Meetip: the too-many line and a
//! close), even with the right key, until the window ends; the right key
//! from another address still works; missing or expired credentials are
//! not guesses. The real binary on loopback (a second loopback address,
//! 127.0.0.2, plays the other client).

mod support_daemon;
mod support_live;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use callhook::ami::simulator::{AfterCapture, Simulator};
use support_daemon::{free_port, temp_dir, Daemon};
use support_live::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];
const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn client(from: Option<IpAddr>) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from)
        .build()
        .unwrap()
}

/// A WebSocket upgrade from `from`: the upgrade's HTTP status when refused.
async fn ws_status(addr: SocketAddr, query: &str, from: IpAddr) -> Result<(), u16> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from, 0)).unwrap();
    let tcp = sock.connect(addr).await.unwrap();
    let req = live_url(addr, query).into_client_request().unwrap();
    match tokio::time::timeout(STEP, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("upgrade in time")
    {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("upgrade: {e}"),
    }
}

fn basic(ext: &str, key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("main/{ext}:{key}"))
    )
}

#[tokio::test]
async fn guessing_keys_blocks_the_address_on_every_surface_and_only_it() {
    let sim = Simulator::new("amiuser", "amipass-1234")
        .session(Vec::new(), AfterCapture::StayOpen)
        .start()
        .await
        .unwrap();
    let dir = temp_dir("live-auth-guard");
    let _ports = PORTS.lock().await;
    let port = free_port();
    let d = Daemon::start(
        &config(
            &dir,
            sim.local_addr().port(),
            port,
            "  auth_failures_per_ip: 5\n  auth_failures_window: 1m\nmeetip:\n  path: /meetip\n",
        ),
        &dir,
        ENV,
    );
    d.wait_http().await;
    drop(_ports);
    let addr = d.listen.unwrap();
    let me = client(None);
    let wrong = "wrong-key-0123456789abcdef";

    // Requests without any credential, and an expired ticket, are no guesses.
    for _ in 0..8 {
        let r = me.get(d.url("/v1/extensions")).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let expired = {
        use base64::Engine;
        use hmac::Mac;
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let payload = e.encode(br#"{"t":"main","e":"1001","s":"agent","x":1000}"#);
        let signed = format!("v1.{payload}");
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", e.encode(mac.finalize().into_bytes()))
    };
    for _ in 0..8 {
        let r = me
            .get(d.url("/v1/calls/live"))
            .bearer_auth(&expired)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }

    // Five guesses, one per surface: HTTP (Basic), a forged ticket, the
    // ticket mint, the WebSocket, Meetip.
    let r = me
        .get(d.url("/v1/extensions"))
        .header("authorization", basic("1001", wrong))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = me
        .get(d.url("/v1/calls/live"))
        .bearer_auth("v1.eyJ0IjoibWFpbiJ9.AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = me
        .post(d.url("/v1/tickets"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"tenant": "main", "key": wrong, "extension": "1001"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let mut ws = connect(
        &live_url(addr, &format!("tenant=main&extension=1001&key={wrong}")),
        None,
    )
    .await;
    assert_eq!(ws.close_code().await, Some(4002));
    let mut page = connect(&format!("ws://{addr}/meetip"), None).await;
    assert_eq!(page.text().await, "(???,CONECTADO)");
    page.send(&format!("270/1001, {wrong} ")).await;
    assert_eq!(page.text().await, "(info,Error de autenticacion)");

    // Now even the right key from this address is refused, everywhere.
    let r = me
        .get(d.url("/v1/extensions"))
        .header("authorization", basic("1001", KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(body["error"], "auth_blocked");
    let r = me
        .post(d.url("/v1/tickets"))
        .header("content-type", "application/json")
        .body(serde_json::json!({"tenant": "main", "key": KEY, "extension": "1001"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let r = me
        .get(d.url(&format!("/v1/live/sse?{}", key_query("1001"))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    let r = me
        .post(d.url("/v1/calls"))
        .header("authorization", basic("1001", KEY))
        .header("content-type", "application/json")
        .body(serde_json::json!({"extension": "1001", "number": "02122853348"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        ws_status(addr, &key_query("1001"), IpAddr::V4(Ipv4Addr::LOCALHOST)).await,
        Err(429)
    );
    let mut page = connect(&format!("ws://{addr}/meetip"), None).await;
    assert_eq!(page.text().await, "(???,CONECTADO)");
    page.send(&format!("270/1001, {KEY} ")).await;
    assert_eq!(page.text().await, "(info,Demasiados intentos)");
    assert!(matches!(page.next().await, Got::Closed(_)));

    // The right key from another address is unaffected.
    let other = client(Some(OTHER_IP));
    let r = other
        .get(d.url("/v1/extensions"))
        .header("authorization", basic("1001", KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ws_status(addr, &key_query("1001"), OTHER_IP).await, Ok(()));

    assert!(
        d.metric("callhook_live_auth_failures_total{reason=\"bad_credential\"}")
            .await
            .unwrap_or(0.0)
            >= 5.0
    );
    assert!(
        d.metric("callhook_live_connections_refused_total{reason=\"auth_blocked\"}")
            .await
            .unwrap_or(0.0)
            >= 6.0
    );
    let (_, _, stderr) = d.stop();
    let blocked: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("address blocked"))
        .collect();
    assert_eq!(blocked.len(), 1, "one warning line: {blocked:?}");
    assert!(blocked[0].contains("127.0.0.1"), "{blocked:?}");
}
