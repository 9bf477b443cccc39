// callhook agent console: plain JS, no build step, no CDN.
// Connects to /v1/live with a ticket (Sec-WebSocket-Protocol), keeps the
// state from the snapshot and the messages, reconnects with backoff and
// resumes from the last seq it saw.
(function () {
  "use strict";
  var $ = function (id) { return document.getElementById(id); };
  var store = window.sessionStorage;
  var st = {
    ticket: null, me: null, scope: null, seq: 0, ws: null, backoff: 500,
    crmUrl: null, crmAuto: false, calls: {}, exts: {}, card: null, requests: {},
    opened: {}
  };

  function text(el, s) { el.textContent = s == null ? "" : String(s); }
  function show(el, on) { el.hidden = !on; }
  function fmtTime(at) {
    if (!at) return "";
    var d = new Date(at);
    return isNaN(d) ? "" : d.toLocaleTimeString();
  }

  function setConn(up, why) {
    var c = $("conn");
    c.className = "conn " + (up ? "up" : "down");
    text(c, up ? "live" : (why || "offline"));
  }

  function crmLink(call) {
    if (!st.crmUrl || !call) return null;
    return st.crmUrl.replace(/\{(\w+)\}/g, function (_, k) {
      var v = k === "extension" ? st.me : call[k];
      return encodeURIComponent(v == null ? "" : String(v));
    });
  }

  // ---- agent view -------------------------------------------------------
  function renderState(ext) {
    var e = st.exts[ext] || { state: "unknown" };
    var el = $("state");
    el.className = "state " + e.state;
    text(el, (e.state || "unknown").replace("_", " ") + (e.call_waiting ? " + ringing" : ""));
    text($("state-since"), e.since ? "since " + fmtTime(e.since) : "");
  }

  function showCard(call, status, cls) {
    st.card = call.session_id;
    var card = $("card");
    card.className = "card " + (cls || "");
    text($("card-status"), status);
    text($("card-number"), call.caller_number || "unknown number");
    text($("card-name"), call.caller_name || "");
    text($("card-queue"), call.queue ? "queue " + call.queue : "");
    var link = crmLink(call);
    var a = $("card-crm");
    if (link) { a.href = link; show(a, true); } else { show(a, false); }
    show(card, true);
    if (link && st.crmAuto && !st.opened[call.session_id] && cls === "") {
      st.opened[call.session_id] = true;
      window.open(link, "_blank", "noopener");
    }
  }

  function hideCard(sid) {
    if (sid && st.card !== sid) return;
    st.card = null;
    show($("card"), false);
  }

  function addHistory(m) {
    var li = document.createElement("li");
    var who = m.role === "caller" ? (m.dialed_number || "?") : (m.caller_number || "?");
    text(li, fmtTime(m.at) + "  " + (m.role === "caller" ? "→ " : "← ") + who +
      (m.caller_name && m.role !== "caller" ? " (" + m.caller_name + ")" : "") +
      "  " + (m.disposition || "") + (m.billsec ? " " + Math.round(m.billsec) + "s" : ""));
    var h = $("history");
    h.insertBefore(li, h.firstChild);
    while (h.children.length > 20) h.removeChild(h.lastChild);
  }

  function cardFromSnapshot() {
    var mine = null;
    Object.keys(st.calls).forEach(function (sid) {
      var c = st.calls[sid], leg = c.legs && c.legs[st.me];
      if (leg && leg.role === "callee") mine = { c: c, leg: leg };
    });
    if (!mine) { hideCard(); return; }
    if (mine.leg.state === "answered") showCard(mine.c, "In call", "answered");
    else showCard(mine.c, "Incoming call", "");
  }

  // ---- supervisor board ---------------------------------------------------
  function boardRow(ext) {
    var tb = document.querySelector("#board tbody");
    var tr = tb.querySelector('tr[data-ext="' + CSS.escape(ext) + '"]');
    if (!tr) {
      tr = document.createElement("tr");
      tr.setAttribute("data-ext", ext);
      ["ext", "state", "caller", "since"].forEach(function (k) {
        var td = document.createElement("td"); td.className = k; tr.appendChild(td);
      });
      text(tr.querySelector(".ext"), ext);
      var rows = Array.prototype.slice.call(tb.children);
      var after = rows.find(function (r) { return r.getAttribute("data-ext") > ext; });
      tb.insertBefore(tr, after || null);
    }
    return tr;
  }

  function renderBoard(ext) {
    var e = st.exts[ext] || { state: "unknown" };
    var tr = boardRow(ext);
    var s = tr.querySelector(".state");
    s.innerHTML = "";
    var b = document.createElement("span");
    b.className = "state " + e.state;
    text(b, e.state.replace("_", " ") + (e.call_waiting ? " + ringing" : ""));
    if (e.registered === false && e.state !== "unavailable") b.title = "not registered";
    s.appendChild(b);
    var caller = "";
    Object.keys(st.calls).forEach(function (sid) {
      var c = st.calls[sid];
      if (c.legs && c.legs[ext]) caller = c.legs[ext].role === "caller" ? "→ " + (c.dialed_number || "") : (c.caller_number || "");
    });
    text(tr.querySelector(".caller"), caller);
    text(tr.querySelector(".since"), fmtTime(e.since));
  }

  function render() {
    if (st.scope === "monitor") Object.keys(st.exts).forEach(renderBoard);
    else { renderState(st.me); cardFromSnapshot(); }
  }

  // ---- messages -------------------------------------------------------------
  function upsertCall(m) {
    var c = st.calls[m.session_id] || (st.calls[m.session_id] = { session_id: m.session_id, legs: {} });
    ["direction", "caller_number", "caller_name", "dialed_number", "queue"].forEach(function (k) {
      if (m[k] != null) c[k] = m[k];
    });
    return c;
  }

  function onMessage(m) {
    if (m.seq && m.type !== "hello" && m.type !== "error") st.seq = Math.max(st.seq, m.seq);
    switch (m.type) {
      case "hello":
        st.me = m.extension; st.scope = m.scope; st.crmUrl = m.crm_url; st.crmAuto = !!m.crm_auto_open;
        text($("who"), m.tenant + " / " + m.extension + (m.scope === "monitor" ? " (supervisor)" : ""));
        text($("my-ext"), m.extension);
        show($("agent"), m.scope !== "monitor"); show($("supervisor"), m.scope === "monitor");
        show($("login"), false); show($("logout"), true);
        break;
      case "snapshot":
        st.calls = {}; st.exts = {};
        (m.calls || []).forEach(function (c) { st.calls[c.session_id] = c; });
        (m.extensions || []).forEach(function (e) { st.exts[e.extension] = e; });
        if (st.scope === "monitor") document.querySelector("#board tbody").innerHTML = "";
        render();
        break;
      case "presence":
        st.exts[m.extension] = { extension: m.extension, state: m.state, since: m.since, call_waiting: m.call_waiting, registered: m.registered };
        if (st.scope === "monitor") renderBoard(m.extension); else if (m.extension === st.me) renderState(st.me);
        break;
      case "call.ringing": {
        var c = upsertCall(m);
        c.legs[m.extension] = { state: "ringing", role: m.role, since: m.at };
        if (st.scope === "monitor") renderBoard(m.extension);
        else if (m.extension === st.me && m.role === "callee") showCard(c, "Incoming call", "");
        break;
      }
      case "call.answered": {
        var c2 = upsertCall(m);
        if (m.answered_by && m.answered_by !== "external") c2.answered_by = m.answered_by;
        if (c2.legs[m.extension]) c2.legs[m.extension].state = "answered";
        if (st.scope === "monitor") { renderBoard(m.extension); break; }
        if (st.card === m.session_id) {
          if (m.answered_by === st.me) showCard(c2, "In call", "answered");
          else if (m.answered_by && m.answered_by !== "external") showCard(c2, "Answered by " + m.answered_by, "elsewhere");
        }
        break;
      }
      case "call.hungup": {
        var c3 = st.calls[m.session_id];
        if (c3) { delete c3.legs[m.extension]; if (!Object.keys(c3.legs).length) delete st.calls[m.session_id]; }
        if (st.scope === "monitor") { renderBoard(m.extension); break; }
        if (m.extension === st.me) { hideCard(m.session_id); addHistory(m); }
        break;
      }
      case "gap":
        break;
      case "error":
        break;
      default:
        if (m.type && m.type.indexOf("originate.") === 0) onOriginate(m);
    }
  }

  var ORIGINATE = {
    queued: "Calling your phone…", ringing_own_phone: "Your phone is ringing: pick it up",
    connected: "Connected: calling the number…", busy: "Your extension is busy",
    no_answer: "Not picked up in time", failed: "Not available"
  };
  function onOriginate(m) {
    var s = m.type === "originate.ended" ? "ended" : m.status;
    var label = s === "ended" ? "Call ended" + (m.request && m.request.outside ? ": " + m.request.outside.disposition : "") : (ORIGINATE[s] || s);
    text($("dial-status"), label + " (" + (m.number || "") + ")");
    $("dial-status").setAttribute("data-status", s);
  }

  // ---- connection -------------------------------------------------------------
  function connect() {
    if (!st.ticket) { showLogin(); return; }
    var proto = location.protocol === "https:" ? "wss:" : "ws:";
    var url = proto + "//" + location.host + "/v1/live" + (st.seq ? "?resume=" + st.seq : "");
    var ws;
    try { ws = new WebSocket(url, ["callhook", "ticket." + st.ticket]); } catch (e) { retry(); return; }
    st.ws = ws;
    ws.onopen = function () { st.backoff = 500; setConn(true); };
    ws.onmessage = function (ev) {
      var m; try { m = JSON.parse(ev.data); } catch (e) { return; }
      onMessage(m);
    };
    ws.onclose = function (ev) {
      st.ws = null;
      if (ev.code === 4001 || ev.code === 4002 || ev.code === 4003) {
        setConn(false, ev.code === 4003 ? "ticket expired" : "not authorised");
        store.removeItem("callhook.ticket"); st.ticket = null; showLogin(ev.code === 4003 ? "Your session expired: log in again." : "Wrong credentials.");
        return;
      }
      setConn(false, "reconnecting");
      retry();
    };
  }
  function retry() {
    var d = st.backoff + Math.random() * st.backoff;
    st.backoff = Math.min(st.backoff * 2, 15000);
    setTimeout(connect, d);
  }

  function showLogin(err) {
    show($("agent"), false); show($("supervisor"), false); show($("logout"), false);
    show($("login"), true);
    text($("login-error"), err || "");
  }

  $("login-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var body = { tenant: $("login-tenant").value.trim(), extension: $("login-extension").value.trim(), key: $("login-key").value };
    fetch("/v1/tickets", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) })
      .then(function (r) { return r.json().then(function (j) { return { ok: r.ok, j: j }; }); })
      .then(function (r) {
        if (!r.ok) { text($("login-error"), r.j.message || "refused"); return; }
        $("login-key").value = "";
        st.ticket = r.j.ticket; store.setItem("callhook.ticket", st.ticket); st.seq = 0;
        connect();
      })
      .catch(function () { text($("login-error"), "cannot reach the server"); });
  });

  $("dial-form").addEventListener("submit", function (e) {
    e.preventDefault();
    var n = $("dial-number").value.trim();
    if (!n) return;
    text($("dial-status"), "Sending…");
    fetch("/v1/calls", {
      method: "POST",
      headers: { "content-type": "application/json", authorization: "Bearer " + st.ticket },
      body: JSON.stringify({ extension: st.me, number: n })
    }).then(function (r) { return r.json().then(function (j) { return { ok: r.ok, j: j }; }); })
      .then(function (r) {
        if (!r.ok) { text($("dial-status"), r.j.message || "refused"); $("dial-status").setAttribute("data-status", "refused"); }
      })
      .catch(function () { text($("dial-status"), "cannot reach the server"); });
  });

  $("logout").addEventListener("click", function () {
    store.removeItem("callhook.ticket"); st.ticket = null;
    if (st.ws) st.ws.close(1000);
    showLogin();
  });

  var q = new URLSearchParams(location.search);
  if (q.get("ticket")) {
    store.setItem("callhook.ticket", q.get("ticket"));
    history.replaceState(null, "", location.pathname);
  }
  st.ticket = store.getItem("callhook.ticket");
  setConn(false);
  connect();
})();
