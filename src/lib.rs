//! callhook: turns PBX call events into one call model and CRM webhooks.
//!
//! Layout, in the order data flows (no module reaches back upstream):
//!
//! - Sources: [`ami`] (the Asterisk Manager Interface: framing codec,
//!   messages, the client task with login, keepalive, reconnect and
//!   actions, and a simulated PBX); [`http`] (the listeners: metrics,
//!   health, reload, the admin API and the asterCC-style push endpoint,
//!   on a server with connection caps and timeouts);
//!   [`source`] ([`source::SourceEvent`], the only type crossing from a
//!   source into the normalizer).
//! - [`agi`]: call routing over FastAGI (an edge next to the AMI client:
//!   Asterisk asks where a call goes; routes reuse the rules' patterns and
//!   the template engine, and may ask a CRM).
//! - [`proxy`]: the AMI proxy (another edge next to the AMI client: AMI
//!   tools log in to callhook and share its one connection per PBX; feeds
//!   nothing into the normalizer).
//! - [`normalize`]: source events → the call model, emitting
//!   [`model::ModelEvent`]s (leg and call transitions, finished records).
//! - [`model`]: the call model types (pure data, the documented JSON).
//! - [`presence`]: extension state per PBX and push team, from the AMI
//!   client's presence events and the model's events (consumes both,
//!   feeds nothing back).
//! - [`live`]: the live side for people at the desk (per-tenant call and
//!   presence stream over WebSocket and SSE, click-to-call through the AMI
//!   client's handle); [`meetip`]: the Meetip PRO wire protocol on that
//!   hub; [`console`]: the agent console page served at `/console`.
//! - [`backfill`]: CDR `Master.csv` → finished call records, the same
//!   model semantics, rules and outbox as live traffic.
//! - [`rules`]: which model events become which requests; [`template`]:
//!   how a rule renders a URL, headers and body.
//! - [`deliver`]: the durable outbox and the dispatcher sending webhooks.
//! - [`cluster`]: cluster mode on NATS JetStream (the one module that knows
//!   NATS: a replicated delivery store and its dispatcher, leases on PBXs
//!   and push teams, a cluster-wide rate limit); without a `cluster:`
//!   section nothing there runs.
//! - Around them: [`config`] (typed, validated configuration), [`app`]
//!   (the one wiring function of `callhook run`), [`replay`] (a capture
//!   through the live path), [`demo`] (everything on one machine),
//!   [`metrics`] (every Prometheus metric), [`notify`] (readiness,
//!   watchdog and stopping notifications to systemd), [`log_limit`]
//!   (rate-limited log lines for events that can repeat fast), [`ruletest`]
//!   (`callhook test`: rule-set unit tests), [`logging`] (log format,
//!   level and the `log:` config section), [`build_info`] (what the binary
//!   was built from, for `--version`).
//! - Leaves used by every config section: [`yaml`] (YAML documents with
//!   positions, and a deserializer that reports every problem) and
//!   [`values`] (durations, time zones, `${VAR}`, secret files).

pub mod agi;
pub mod ami;
pub mod app;
pub mod backfill;
pub mod build_info;
pub mod cluster;
pub mod config;
pub mod console;
pub mod deliver;
pub mod demo;
pub mod http;
pub mod live;
pub mod log_limit;
pub mod logging;
pub mod meetip;
pub mod metrics;
pub mod model;
pub mod normalize;
pub mod notify;
pub mod presence;
pub mod proxy;
pub mod replay;
pub mod rules;
pub mod ruletest;
pub mod source;
pub mod template;
pub mod values;
pub mod yaml;
