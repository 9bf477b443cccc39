//! Call routing over FastAGI: Asterisk asks callhook where a call goes.
//!
//! ```text
//! dialplan AGI(agi://callhook:4573/route) ─TCP─▶ server (caps, allow_from)
//!   ─▶ session (environment, commands, replies, HANGUP, deadlines)
//!   ─▶ handler: call (numbers, extension) ─▶ route (conditions, allow, pin)
//!        ─▶ actions (YAML) │ CRM answer (HTTP, cached) │ fallback
//!   ─▶ AGI commands (EXEC Dial, STREAM FILE, SET VARIABLE …) ─▶ close
//! ```
//!
//! An edge next to the AMI client: it shares nothing with the event path
//! (sources → normalizer → rules → outbox) except what it reuses from it:
//! the number patterns, rewriting and matchers of [`crate::rules`], the
//! template engine of [`crate::template`] (CRM requests, `set:` values,
//! dial channels), the targets of [`crate::deliver`] (HTTP client, TLS,
//! headers, signing) and the extension/trunk [classifier](crate::normalize::channel).
//!
//! Files, one concept each: [`protocol`] (the wire format), [`session`]
//! (commands under deadlines, HANGUP and dead channels), [`server`] (the
//! listener), [`config`] (the `agi:` section), [`call`] (the call's data),
//! [`route`] (routing rules and authorization), [`action`] (what a route
//! does), [`check`] (the values it may send), [`answer`] (a CRM's JSON
//! answer), [`run`] (actions as AGI commands), [`pin`] (PIN authentication), [`crm`] (asking
//! the CRM), [`handler`] (one call from start to close).

pub mod action;
pub mod answer;
pub mod call;
pub mod check;
pub mod config;
pub mod crm;
pub mod handler;
pub mod pin;
pub mod protocol;
pub mod route;
pub mod run;
pub mod server;
pub mod session;

pub use config::{build, AgiConfig, AgiProblem, AgiSettings, BuildContext, RawAgi, Router};
pub use server::serve;
