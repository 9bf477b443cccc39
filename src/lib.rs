//! callhook: turns PBX call events into one call model and CRM webhooks.
//!
//! Layout (data flows one way, top to bottom):
//!
//! - [`ami`]: the Asterisk Manager Interface: framing codec, messages, the
//!   client task (login, keepalive, reconnect, actions) and a simulated PBX.
//! - [`source`]: [`source::SourceEvent`], the only type crossing from a source
//!   into the normalizer.
//! - [`normalize`]: turns source events into the call model, emitting
//!   [`model::ModelEvent`]s (leg and call transitions, finished call records).
//! - [`model`]: the call model types (pure data, serializable).
//! - [`config`]: typed configuration, validated before use.
//! - [`replay`]: runs a capture file through the same path as live traffic.
//! - [`metrics`]: every Prometheus metric.
//! - [`logging`]: the log format, level and the `log:` config section.
//! - [`build_info`]: what the binary was built from (`--version`).

pub mod ami;
pub mod app;
pub mod backfill;
pub mod build_info;
pub mod config;
pub mod deliver;
pub mod demo;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod normalize;
pub mod replay;
pub mod rules;
pub mod source;
pub mod template;
