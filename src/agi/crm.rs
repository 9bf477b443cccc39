//! Asking the CRM what to do with a call ("voice webhooks").
//!
//! ```yaml
//! crm:
//!   target: crm                # a target from `targets:` (TLS, static headers, signing)
//!   url: "https://crm.example.com/calls/route?caller=%CALLER_ID%&did=%DIALED%"
//!   method: POST               # default GET without a body, POST with one
//!   headers: { Authorization: "Bearer {{env.CRM_TOKEN}}" }
//!   json: { caller: "%CALLER_ID%", dialed: "%DIALED%", extension: "%EXTENSION%", call: "{{call.session_id}}" }
//!   timeout: 1500ms            # the whole exchange (default 2s, at most 10s)
//!   cache: 5m                  # answers per caller number, for this long (default: no cache)
//!   allow: [dial, voicemail, playback, set, hangup]   # actions the answer may use (default all)
//! ```
//!
//! The request is built by the same template engine as webhooks (URL
//! values percent-encoded, JSON values escaped; `{{env.X}}` from the
//! top-level `env:` list) and sent with the target's HTTP client (its CA
//! and client certificate, its static headers and, when the target signs,
//! Standard Webhooks signature headers with `webhook-id`
//! `{uniqueid}/agi/{route}`). The answer must be a `2xx` with a JSON body
//! (at most 64 KiB) holding actions (see [`super::action`]); anything
//! else — a timeout, a connection error, another status, bad JSON, an
//! unknown or disallowed action, an unsafe value — runs the route's
//! `fallback:` instead, so the call never waits on a broken CRM for more
//! than `timeout`. A caller who hangs up while the CRM thinks ends the
//! lookup at once.
//!
//! Cached answers are kept per route and caller number (after rewriting;
//! calls without a caller number are never cached), in a bounded cache
//! (`agi.crm_cache_entries`, default 10000: expired entries go first, then
//! those closest to expiring). Only valid answers are cached. Outcomes are
//! counted in `callhook_agi_crm_requests_total{route,result}` (`ok`,
//! `cached`, `timeout`, `error`, `invalid`) and timed in
//! `callhook_agi_crm_seconds{route}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use tokio::time::Instant;

use super::action::{from_json, Action, ActionKind};
use super::call::AgiCall;
use super::config::{Build, BuildContext};
use crate::deliver::http::build;
use crate::deliver::outbox::Claimed;
use crate::deliver::Target;
use crate::rules::{Scalar, Words};
use crate::template::EventKind;
use crate::template::{
    FormTemplate, JsonTemplate, TemplateContext, Templates, TextTemplate, UrlTemplate,
};

/// Default CRM timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest CRM timeout allowed (a caller is waiting).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
pub const MAX_ANSWER: usize = 64 * 1024;

/// `crm:` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCrm {
    /// Target name.
    pub target: String,
    /// URL template.
    pub url: String,
    /// HTTP method.
    pub method: Option<String>,
    /// Header templates.
    pub headers: Option<crate::yaml::Mapping>,
    /// JSON body.
    pub json: Option<crate::yaml::Value>,
    /// Form body.
    pub form: Option<crate::yaml::Mapping>,
    /// Text body.
    pub body: Option<String>,
    /// Whole-exchange timeout (default 2s).
    pub timeout: Option<Scalar>,
    /// Cache answers per caller for this long.
    pub cache: Option<Scalar>,
    /// Actions the answer may use.
    pub allow: Option<Words>,
}

/// A compiled request body.
#[derive(Debug, Clone)]
pub enum CrmBody {
    /// None.
    None,
    /// JSON.
    Json(JsonTemplate),
    /// Form.
    Form(FormTemplate),
    /// Text.
    Text(TextTemplate),
}

/// A compiled CRM lookup.
#[derive(Debug, Clone)]
pub struct Crm {
    /// Target name.
    pub target: String,
    /// HTTP method.
    pub method: String,
    /// URL.
    pub url: UrlTemplate,
    /// Headers.
    pub headers: Vec<(String, TextTemplate)>,
    /// Body.
    pub body: CrmBody,
    /// Whole-exchange timeout.
    pub timeout: Duration,
    /// Cache lifetime, when caching.
    pub cache_ttl: Option<Duration>,
    /// Allowed actions.
    pub allow: Vec<ActionKind>,
}

/// Why the CRM gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrmFailure {
    /// `timeout`, `error` or `invalid` (a metric label).
    pub kind: &'static str,
    /// What happened (never the URL: it may hold a token).
    pub message: String,
}

impl CrmFailure {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// (route, caller) → (expiry, actions).
type Entries = HashMap<(String, String), (Instant, Arc<Vec<Action>>)>;

/// Cached answers, bounded.
#[derive(Debug)]
pub struct CrmCache {
    max: usize,
    map: Mutex<Entries>,
}

impl CrmCache {
    /// A cache of at most `max` answers.
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh answer for `caller` on `route`.
    pub fn get(&self, route: &str, caller: &str) -> Option<Arc<Vec<Action>>> {
        let mut m = self.lock();
        let key = (route.to_string(), caller.to_string());
        match m.get(&key) {
            Some((exp, a)) if *exp > Instant::now() => Some(a.clone()),
            Some(_) => {
                m.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Keeps an answer until `ttl` from now.
    pub fn put(&self, route: &str, caller: &str, ttl: Duration, actions: Arc<Vec<Action>>) {
        let mut m = self.lock();
        let now = Instant::now();
        let key = (route.to_string(), caller.to_string());
        if m.len() >= self.max && !m.contains_key(&key) {
            m.retain(|_, (exp, _)| *exp > now);
            while m.len() >= self.max {
                let Some(k) = m
                    .iter()
                    .min_by_key(|(_, (exp, _))| *exp)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                m.remove(&k);
            }
        }
        m.insert(key, (now + ttl, actions));
    }

    /// Entries held (expired ones included until touched).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Crm {
    fn render(
        &self,
        route: &str,
        call: &AgiCall,
        templates: &Templates,
        ctx: &TemplateContext<'_>,
    ) -> Result<Claimed, String> {
        let rendered = templates
            .render_url(&self.url, ctx)
            .map_err(|e| e.to_string())?;
        if let Some(why) = rendered.refused {
            return Err(why);
        }
        let url = rendered.url;
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (k, v) in &self.headers {
            headers.push((
                k.clone(),
                templates.render_header(v, ctx).map_err(|e| e.to_string())?,
            ));
        }
        let (body, ct) = match &self.body {
            CrmBody::None => (None, None),
            CrmBody::Json(j) => (
                Some(templates.render_json(j, ctx).map_err(|e| e.to_string())?),
                Some("application/json"),
            ),
            CrmBody::Form(f) => (
                Some(templates.render_form(f, ctx).map_err(|e| e.to_string())?),
                Some("application/x-www-form-urlencoded"),
            ),
            CrmBody::Text(t) => (
                Some(
                    templates
                        .render(t, ctx)
                        .map_err(|e| e.to_string())?
                        .into_bytes(),
                ),
                Some("text/plain; charset=utf-8"),
            ),
        };
        if let Some(ct) = ct {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            {
                headers.push(("Content-Type".into(), ct.into()));
            }
        }
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("accept"))
        {
            headers.push(("Accept".into(), "application/json".into()));
        }
        Ok(Claimed {
            id: 0,
            target: self.target.clone(),
            rule: route.to_string(),
            session_id: call.uniqueid.clone(),
            pbx: call.pbx.clone(),
            event_id: format!("{}/agi/{route}", call.uniqueid),
            method: self.method.clone(),
            url,
            headers,
            body,
            idempotency_key: None,
            created_at: crate::source::now_epoch(),
            expires_at: None,
            attempts: 0,
            refused: None,
            secrets: Vec::new(),
        })
    }

    async fn exchange(&self, target: &Target, req: &Claimed) -> Result<Vec<Action>, CrmFailure> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // The dispatcher's builder: the same checks and credentials.
        let built = build(Some(target), req.into(), now)
            .map_err(|e| CrmFailure::new("error", e.to_string()))?;
        let mut r = target
            .client
            .request(built.method, built.url)
            .headers(built.headers);
        if let Some(b) = &req.body {
            r = r.body(b.clone());
        }
        let mut resp = r.send().await.map_err(|e| {
            let e = e.without_url();
            let kind = if e.is_timeout() { "timeout" } else { "error" };
            CrmFailure::new(kind, e.to_string())
        })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(CrmFailure::new(
                "error",
                format!("the CRM answered {status}"),
            ));
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(c)) => {
                    if body.len() + c.len() > MAX_ANSWER {
                        return Err(CrmFailure::new(
                            "invalid",
                            format!("answer larger than {MAX_ANSWER} bytes"),
                        ));
                    }
                    body.extend_from_slice(&c);
                }
                Ok(None) => break,
                Err(e) => {
                    let kind = if e.is_timeout() { "timeout" } else { "error" };
                    return Err(CrmFailure::new(kind, e.without_url().to_string()));
                }
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| CrmFailure::new("invalid", format!("the answer is not JSON: {e}")))?;
        from_json(&v, &self.allow).map_err(|e| CrmFailure::new("invalid", e))
    }

    /// Asks the CRM (or the cache): the actions and whether they were cached.
    pub async fn ask(
        &self,
        route: &str,
        call: &AgiCall,
        templates: &Templates,
        ctx: &TemplateContext<'_>,
        target: &Target,
        cache: &CrmCache,
    ) -> Result<(Arc<Vec<Action>>, bool), CrmFailure> {
        let m = &crate::metrics::metrics().agi;
        let count = |result: &str| m.crm_requests.with_label_values(&[route, result]).inc();
        let cache_key = self.cache_ttl.and(call.caller.as_deref());
        if let Some(caller) = cache_key {
            if let Some(a) = cache.get(route, caller) {
                count("cached");
                return Ok((a, true));
            }
        }
        let req = self.render(route, call, templates, ctx).map_err(|e| {
            count("error");
            CrmFailure::new("error", format!("the request did not render: {e}"))
        })?;
        let started = Instant::now();
        let r = match tokio::time::timeout(self.timeout, self.exchange(target, &req)).await {
            Ok(r) => r,
            Err(_) => Err(CrmFailure::new(
                "timeout",
                format!("no complete answer within {:?}", self.timeout),
            )),
        };
        m.crm_seconds
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        match r {
            Ok(actions) => {
                count("ok");
                let a = Arc::new(actions);
                if let (Some(ttl), Some(caller)) = (self.cache_ttl, cache_key) {
                    cache.put(route, caller, ttl, a.clone());
                }
                Ok((a, false))
            }
            Err(f) => {
                count(f.kind);
                Err(f)
            }
        }
    }
}

/// Checks and compiles `compile`.
pub(super) fn compile(
    b: &mut Build,
    c: &RawCrm,
    at: &str,
    cx: &BuildContext<'_>,
    templates: &mut Templates,
    sample: &TemplateContext<'_>,
) -> Option<Crm> {
    let before = b.problems.len();
    if !cx.targets.contains_key(&c.target) {
        let known: Vec<&str> = cx.targets.keys().map(String::as_str).collect();
        let hint = if known.is_empty() {
            "define it under targets:".to_string()
        } else {
            format!("targets: {}", known.join(", "))
        };
        b.push(
            format!("{at}.target"),
            format!("unknown target {:?}", c.target),
            Some(&hint),
            Some(&c.target),
        );
    }
    let kind = EventKind::CallState;
    let url = match templates.url(&c.url) {
        Ok(u) => {
            for t in u.templates() {
                if let Err(e) = templates.check(t, sample, kind) {
                    b.template_errors(&format!("{at}.url"), vec![e]);
                }
            }
            Some(u)
        }
        Err(es) => {
            b.template_errors(&format!("{at}.url"), es);
            None
        }
    };
    let headers = match &c.headers {
        None => Vec::new(),
        Some(m) => {
            let (h, es) = templates.headers_partial(m);
            b.template_errors(&format!("{at}.headers"), es);
            let es = templates.check_fields(&h, sample, kind);
            b.template_errors(&format!("{at}.headers"), es);
            h
        }
    };
    let bodies = [c.json.is_some(), c.form.is_some(), c.body.is_some()];
    if bodies.iter().filter(|x| **x).count() > 1 {
        b.push(at, "give only one of json, form, body", None, None);
    }
    let body = if let Some(j) = &c.json {
        let (t, es) = templates.json_partial(j);
        b.template_errors(&format!("{at}.json"), es);
        let es = templates.check_json(&t, sample, kind);
        b.template_errors(&format!("{at}.json"), es);
        CrmBody::Json(t)
    } else if let Some(f) = &c.form {
        let (t, es) = templates.form_partial(f);
        b.template_errors(&format!("{at}.form"), es);
        let es = templates.check_fields(t.fields(), sample, kind);
        b.template_errors(&format!("{at}.form"), es);
        CrmBody::Form(t)
    } else if let Some(s) = &c.body {
        match templates.text(s) {
            Ok(t) => {
                if let Err(e) = templates.check(&t, sample, kind) {
                    b.template_errors(&format!("{at}.body"), vec![e]);
                }
                CrmBody::Text(t)
            }
            Err(es) => {
                b.template_errors(&format!("{at}.body"), es);
                CrmBody::None
            }
        }
    } else {
        CrmBody::None
    };
    let method = c
        .method
        .clone()
        .unwrap_or_else(|| {
            if matches!(body, CrmBody::None) {
                "GET"
            } else {
                "POST"
            }
            .into()
        })
        .to_ascii_uppercase();
    if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "PATCH") {
        b.push(
            format!("{at}.method"),
            format!("{method:?} is not GET, POST, PUT or PATCH"),
            None,
            Some(&method),
        );
    }
    let timeout = b.duration(
        &c.timeout,
        &format!("{at}.timeout"),
        DEFAULT_TIMEOUT,
        Duration::from_millis(50),
        MAX_TIMEOUT,
    );
    let cache_ttl = c.cache.as_ref().map(|_| {
        b.duration(
            &c.cache,
            &format!("{at}.cache"),
            Duration::ZERO,
            Duration::from_secs(1),
            Duration::from_secs(86400),
        )
    });
    let allow = match &c.allow {
        None => ActionKind::ALL.to_vec(),
        Some(w) => {
            let mut out = Vec::new();
            for item in &w.items {
                match ActionKind::parse(item) {
                    Some(k) => out.push(k),
                    None => b.push(
                        format!("{at}.allow"),
                        format!("unknown action {item:?}"),
                        Some("dial, voicemail, conference, playback, set, hangup, goto"),
                        Some(item),
                    ),
                }
            }
            if w.items.is_empty() {
                b.push(
                    format!("{at}.allow"),
                    "an empty list allows no answer: every call would fall back",
                    None,
                    None,
                );
            }
            out
        }
    };
    (b.problems.len() == before).then_some(Crm {
        target: c.target.clone(),
        method,
        url: url?,
        headers,
        body,
        timeout,
        cache_ttl,
        allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_is_bounded_and_expires() {
        let c = CrmCache::new(2);
        let a = Arc::new(vec![Action::Hangup(16)]);
        c.put("r", "1", Duration::from_secs(60), a.clone());
        c.put("r", "2", Duration::from_secs(30), a.clone());
        c.put("r", "3", Duration::from_secs(90), a.clone());
        assert_eq!(c.len(), 2);
        // The one closest to expiring went.
        assert!(c.get("r", "2").is_none());
        assert!(c.get("r", "1").is_some() && c.get("r", "3").is_some());
        assert!(c.get("other", "1").is_none());
        c.put("r", "4", Duration::ZERO, a);
        assert!(c.get("r", "4").is_none());
    }
}
