//! The Meetip PRO dialogue, frame by frame, with a plain WebSocket client
//! (as the FancyWebSocket library of the Meetip demo page sends text frames),
//! against the real binary and the simulated PBX.

mod support_daemon;
mod support_live;

use callhook::ami::sim_originate::OriginateRecording;
use callhook::ami::simulator::{AfterCapture, SimSession, Simulator, SimulatorHandle};
use support_daemon::{fixture, free_port, temp_dir, Daemon};
use support_live::*;

const ENV: &[(&str, &str)] = &[("E2E_AMI_SECRET", "amipass-1234")];

/// `own_listener`: Meetip on its own port (any path), else on `/meetip`
/// of the main listener.
async fn start(
    name: &str,
    sim: Simulator,
    meetip: &str,
    own_listener: bool,
) -> (Daemon, SimulatorHandle, String) {
    let sim = sim.start().await.unwrap();
    let dir = temp_dir(name);
    let _ports = PORTS.lock().await;
    let port = free_port();
    let mport = free_port();
    let listen = if own_listener {
        format!("  listen: 127.0.0.1:{mport}\n")
    } else {
        String::new()
    };
    let extra = format!("  originate: {{ per_user_per_minute: 30 }}\nmeetip:\n{listen}{meetip}");
    let d = Daemon::start(
        &config(&dir, sim.local_addr().port(), port, &extra),
        &dir,
        ENV,
    );
    d.wait_http().await;
    if own_listener {
        wait_port(mport).await;
    }
    drop(_ports);
    sim.wait_for(|s| s.logins >= 1).await;
    let url = if own_listener {
        format!("ws://127.0.0.1:{mport}/")
    } else {
        format!("ws://127.0.0.1:{port}/meetip")
    };
    (d, sim, url)
}

/// Reads frames until one equals `want`; returns what came before it.
async fn until(ws: &mut Ws, want: &str) -> Vec<String> {
    let mut before = Vec::new();
    loop {
        let t = ws.text().await;
        if t == want {
            return before;
        }
        before.push(t);
    }
}

#[tokio::test]
async fn login_phases_screen_pop_states_status_and_monitor_lines() {
    // At 5× the capture's seconds stay apart: states (presence tracker)
    // and pops (call model) travel different paths.
    let sim = Simulator::new("amiuser", "amipass-1234")
        .gated()
        .speed(Some(5.0))
        .session(
            fixture("asterisk-20/queue-answered.ami"),
            AfterCapture::StayOpen,
        );
    let (d, sim, url) = start("meetip-dialogue", sim, "  logins_per_minute: 6\n", true).await;

    // Wrong key: an (info,…) line, then the close.
    let mut ws = connect(&url, None).await;
    assert_eq!(ws.text().await, "(???,CONECTADO)");
    ws.send("270/1001, not-the-key ").await;
    assert_eq!(ws.text().await, "(info,Error de autenticacion)");
    assert!(matches!(ws.next().await, Got::Closed(_)));

    // First phase, with the numeric code as the tenant, exactly as the page sends it.
    let mut a1 = connect(&url, None).await;
    assert_eq!(a1.text().await, "(???,CONECTADO)");
    a1.send(&format!("270/1001, {KEY} ")).await;
    // Status of an unknown extension (also proves the login is done).
    a1.send(" (status, 4711 ) ").await;
    assert_eq!(a1.text().await, "(status,ErrorNumber)");
    // Later connects from this address: the light phase.
    let mut a2 = connect(&url, None).await;
    assert_eq!(a2.text().await, "(ID?,CONECTADO)");
    // …but only for a tenant/extension this address logged in as: 1002 needs the key.
    a2.send("main, 1002").await;
    assert_eq!(a2.text().await, "(info,Error de autenticacion)");
    let mut a2 = connect(&url, None).await;
    assert_eq!(a2.text().await, "(ID?,CONECTADO)");
    a2.send(&format!("main/1002, {KEY}")).await;
    let mut a1b = connect(&url, None).await;
    assert_eq!(a1b.text().await, "(ID?,CONECTADO)");
    a1b.send("main, 1001").await;
    let mut mon = connect(&url, None).await;
    assert_eq!(mon.text().await, "(ID?,CONECTADO)");
    mon.send(&format!("270/999, {KEY}")).await;
    for ws in [&mut a2, &mut a1b, &mut mon] {
        ws.send("(status, 4711)").await;
        assert_eq!(ws.text().await, "(status,ErrorNumber)");
    }

    sim.release();
    // 1001: the pop with the real caller, its state ringing, then free. The
    // state lines come from the presence tracker and the pop from the call
    // model, so the pop is not ordered with them; the login's own state
    // (free) comes first.
    let lines = until_states(&mut a1, &["(info,-Timbre)", "(info,-Libre)"]).await;
    assert!(
        lines.contains(&"(CALL,5559876543)".to_string()),
        "{lines:?}"
    );
    // The light-login tab of 1001 gets the same.
    until(&mut a1b, "(CALL,5559876543)").await;
    // 1002: pop, ringing, busy (answered), free.
    let lines = until_states(
        &mut a2,
        &["(info,-Timbre)", "(info,-Ocupado)", "(info,-Libre)"],
    )
    .await;
    assert!(
        lines.contains(&"(CALL,5559876543)".to_string()),
        "{lines:?}"
    );
    // Status of an extension now known.
    a2.send("(status, 1001)").await;
    let before = until(&mut a2, "(estado,1001-libre)").await;
    assert!(
        before.iter().all(|l| l.starts_with("(info,-")),
        "{before:?}"
    );

    // Monitor: every extension, code-state-ext-session lines (states come
    // from the presence tracker, calls from the model: a state line and a
    // call's end are not ordered with each other).
    let mut lines = Vec::new();
    let done = |lines: &Vec<String>| {
        [
            "(info,270-Libre-1002-",
            "(info,270-terminada-1001-",
            "(info,270-terminada-1002-",
        ]
        .iter()
        .all(|p| lines.iter().any(|l| l.starts_with(p)))
    };
    while !done(&lines) {
        lines.push(mon.text().await);
    }
    let session = lines
        .iter()
        .find(|l| l.starts_with("(info,270-5559876543-1001-"))
        .and_then(|l| {
            l.trim_end_matches(')')
                .rsplit('-')
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no caller line for 1001: {lines:?}"));
    assert!(
        lines.contains(&format!("(info,270-5559876543-1002-{session})")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("(info,270-Ocupada-1002-{session})")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("(info,270-terminada-1001-{session})")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("(info,270-terminada-1002-{session})")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.starts_with("(info,270-Timbre-")),
        "the caller's number stands for Timbre: {lines:?}"
    );
    // The monitor cannot call.
    mon.send("(call, 02122853301)").await;
    let before = until(&mut mon, "(info,El monitor no puede llamar)").await;
    assert!(before.len() < 10, "{before:?}");

    // Login attempts are rate limited per address (6 per minute: 5 used).
    let mut n = 0;
    let refused = loop {
        n += 1;
        let mut ws = connect(&url, None).await;
        ws.text().await;
        ws.send(&format!("main/1003, {KEY}")).await;
        let t = ws.text().await;
        if t == "(info,Demasiados intentos)" {
            break true;
        }
        if n > 5 {
            break false;
        }
    };
    assert!(refused);
    d.stop();
}

#[tokio::test]
async fn click_to_call_answers() {
    let mut s = Simulator::new("amiuser", "amipass-1234").speed(Some(8.0));
    s.sessions = vec![SimSession::empty(AfterCapture::StayOpen)];
    for c in [
        "answered",
        "agent-busy",
        "agent-noanswer",
        "agent-unregistered",
    ] {
        s = s.originate(
            OriginateRecording::from_capture(&fixture(&format!("originate/{c}.ami"))).unwrap(),
        );
    }
    let (d, _sim, url) = start("meetip-c2c", s, "  path: /meetip\n", false).await;
    let mut a = connect(&url, None).await;
    assert_eq!(a.text().await, "(???,CONECTADO)");
    a.send(&format!("main/1001, {KEY}")).await;
    for (number, want) in [
        ("02122853301", "(info,Llamando...)"),
        ("02122853302", "(info,Ocupado)"),
        ("02122853303", "(info,Tiempo de espera agotado)"),
    ] {
        a.send(&format!(" (call, {number})")).await;
        until(&mut a, want).await;
    }
    let mut b = connect(&url, None).await;
    b.text().await;
    b.send(&format!("main/1004, {KEY}")).await;
    b.send("(call, 02122853307)").await;
    until(&mut b, "(info,No disponible)").await;
    // A refused number never reaches the PBX and says "No disponible".
    b.send("(call, 12;34)").await;
    until(&mut b, "(info,No disponible)").await;
    d.stop();
}
