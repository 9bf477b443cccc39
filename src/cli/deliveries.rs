//! `callhook deliveries list` output: a table with a header, ages and next
//! attempts relative to now, or JSON lines with RFC 3339 times.

use std::io::Write;

use serde_json::{Map, Value};

use callhook::backfill::human_secs;
use callhook::deliver::outbox::{DeliveryRow, ListFilter, Outbox, Status};
use callhook::deliver::store::DeliveryStore;
use callhook::model::Timestamp;

use super::exit::{fail, CliResult, Code, Coded};
use crate::{load_outbox, runtime, DeliveriesAction, DeliveriesArgs};

fn rfc3339(t: f64) -> Value {
    Value::String(Timestamp(t).to_rfc3339())
}

/// One JSON object per row: the admin API's fields, times as RFC 3339 UTC
/// (`next_attempt_at` only while pending), plus `age_seconds` (since it
/// entered the outbox).
pub fn json(r: &DeliveryRow, now: f64) -> serde_json::Result<Value> {
    let mut v = serde_json::to_value(r)?;
    if let Value::Object(m) = &mut v {
        for k in ["created_at", "enqueued_at", "updated_at"] {
            if let Some(t) = m.get(k).and_then(Value::as_f64) {
                m.insert(k.into(), rfc3339(t));
            }
        }
        let expires = r.expires_at.map(rfc3339).unwrap_or(Value::Null);
        m.insert("expires_at".into(), expires);
        let next = if r.status == Status::Pending {
            rfc3339(r.next_attempt_at)
        } else {
            Value::Null
        };
        m.insert("next_attempt_at".into(), next);
        let age = (now - r.enqueued_at).max(0.0);
        m.insert(
            "age_seconds".into(),
            serde_json::Number::from_f64((age * 1000.0).round() / 1000.0)
                .map(Value::Number)
                .unwrap_or(Value::Null),
        );
    } else {
        v = Value::Object(Map::new());
    }
    Ok(v)
}

/// When the next attempt is, for people: `now`, `in 12s`, `sending`, `-`.
pub fn next_attempt(r: &DeliveryRow, now: f64) -> String {
    match r.status {
        Status::Pending if r.next_attempt_at <= now => "now".into(),
        Status::Pending => format!("in {}", human_secs(r.next_attempt_at - now)),
        Status::Inflight => "sending".into(),
        _ => "-".into(),
    }
}

const HEADER: [&str; 9] = [
    "ID", "STATUS", "TARGET", "RULE", "ATTEMPTS", "LAST", "AGE", "NEXT", "REQUEST",
];

/// The table: a header and one line per row, columns as wide as their
/// content (the request, last, is not padded).
pub fn table(w: &mut impl Write, rows: &[DeliveryRow], now: f64) -> std::io::Result<()> {
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.status.as_str().to_string(),
                r.target.clone(),
                r.rule.clone(),
                r.attempts.to_string(),
                r.last_status.clone().unwrap_or_else(|| "-".into()),
                human_secs(now - r.enqueued_at),
                next_attempt(r, now),
                format!("{} {}", r.method, r.url),
            ]
        })
        .collect();
    let mut width = HEADER.map(str::len);
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            width[i] = width[i].max(s.chars().count());
        }
    }
    let line = |w: &mut dyn Write, c: &[&str]| -> std::io::Result<()> {
        let mut s = String::new();
        for (i, v) in c.iter().enumerate() {
            if i + 1 == c.len() {
                s.push_str(v);
            } else if i == 0 || i == 4 {
                // Numbers right-aligned.
                s.push_str(&format!("{v:>width$}  ", width = width[i]));
            } else {
                s.push_str(&format!("{v:<width$}  ", width = width[i]));
            }
        }
        writeln!(w, "{}", s.trim_end())
    };
    line(w, &HEADER)?;
    for c in &cells {
        let refs: Vec<&str> = c.iter().map(String::as_str).collect();
        line(w, &refs)?;
    }
    Ok(())
}

/// Runs `callhook deliveries`.
pub fn run(args: DeliveriesArgs) -> CliResult {
    let Some(config) = args.config else {
        return Err(fail!(
            Code::Usage,
            "--config FILE (or CALLHOOK_CONFIG) is needed to find the outbox (state_dir)"
        ));
    };
    // Only state_dir and outbox: the secrets of the config need not be set.
    let cfg = load_outbox(&config)?;
    runtime()?.block_on(async move {
        if let Some(cc) = &cfg.cluster {
            // Cluster mode: the deliveries are in the NATS streams.
            let cluster = callhook::cluster::Cluster::connect(cc.clone())
                .await
                .code_with(Code::Runtime, || "connecting to the cluster".to_string())?;
            let store = callhook::cluster::store::ClusterStore::new(&cluster)
                .await
                .code_with(Code::Runtime, || "opening the delivery stream".to_string())?;
            return action(&store, args.action).await;
        }
        // Shared: a running daemon's attempts in flight stay its own.
        let outbox = Outbox::open_shared(&cfg.state_dir, cfg.outbox.clone())
            .code_with(Code::Runtime, || {
                format!("opening the outbox in {}", cfg.state_dir.display())
            })?;
        let r = action(&outbox, args.action).await;
        outbox.close();
        r
    })
}

fn store_error(e: String) -> anyhow::Error {
    anyhow::anyhow!(e)
}

async fn action(outbox: &dyn DeliveryStore, action: DeliveriesAction) -> CliResult {
    let mut w = std::io::stdout().lock();
    match action {
        DeliveriesAction::List {
            dead,
            status,
            target,
            limit,
            json,
        } => {
            let status = if dead {
                Some(Status::Dead)
            } else {
                status.map(Status::from)
            };
            let rows = outbox
                .list(ListFilter {
                    status,
                    target,
                    limit,
                })
                .await
                .map_err(store_error)?;
            let now = callhook::source::now_epoch();
            if json {
                for r in &rows {
                    writeln!(w, "{}", self::json(r, now)?)?;
                }
            } else if rows.is_empty() {
                writeln!(w, "no deliveries")?;
            } else {
                table(&mut w, &rows, now)?;
            }
        }
        DeliveriesAction::Retry { id, all_dead } => {
            if all_dead {
                let n = outbox.retry_all_dead().await.map_err(store_error)?;
                writeln!(w, "{n} dead deliveries will be retried")?;
            } else if let Some(id) = id {
                if outbox.retry(id).await.map_err(store_error)? {
                    writeln!(w, "delivery {id} will be retried")?;
                } else {
                    return Err(fail!(
                        Code::Runtime,
                        "delivery {id} not found, or not dead/expired"
                    ));
                }
            }
            writeln!(w, "(a running daemon picks them up within seconds)")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, status: Status, enqueued: f64, next: f64) -> DeliveryRow {
        DeliveryRow {
            id,
            target: "crm".into(),
            rule: "call-log".into(),
            session_id: "1.1".into(),
            pbx: "main".into(),
            event_id: "e".into(),
            method: "POST".into(),
            url: "http://127.0.0.1/x".into(),
            headers: vec![],
            body_excerpt: None,
            body_len: 0,
            idempotency_key: None,
            created_at: enqueued,
            expires_at: None,
            enqueued_at: enqueued,
            status,
            attempts: 2,
            next_attempt_at: next,
            last_status: Some("503".into()),
            last_error: None,
            updated_at: enqueued,
        }
    }

    #[test]
    fn table_has_a_header_ages_and_next_attempts() {
        let now = 1_800_000_000.0;
        let rows = [
            row(12, Status::Pending, now - 125.0, now + 30.0),
            row(7, Status::Done, now - 7200.0, now - 7000.0),
        ];
        let mut out = Vec::new();
        table(&mut out, &rows, now).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID  STATUS"), "{text}");
        assert!(
            lines[0].contains("AGE") && lines[0].contains("NEXT"),
            "{text}"
        );
        assert!(
            lines[1].contains(" 2m ") && lines[1].contains("in 30s"),
            "{text}"
        );
        assert!(
            lines[2].contains("2h 0m") && lines[2].contains(" - "),
            "{text}"
        );
        // Columns line up: STATUS starts at the same place on every line.
        let col = lines[0].find("STATUS").unwrap();
        assert_eq!(lines[1].find("pending"), Some(col), "{text}");
        assert_eq!(lines[2].find("done"), Some(col), "{text}");
    }

    #[test]
    fn json_times_are_rfc3339() {
        let now = 1_800_000_000.0;
        let v = json(&row(1, Status::Pending, now - 10.0, now + 5.0), now).unwrap();
        assert_eq!(v["enqueued_at"], "2027-01-15T07:59:50.000000Z");
        assert_eq!(v["next_attempt_at"], "2027-01-15T08:00:05.000000Z");
        assert_eq!(v["expires_at"], Value::Null);
        assert_eq!(v["age_seconds"], 10.0);
        let done = json(&row(1, Status::Done, now, now), now).unwrap();
        assert_eq!(done["next_attempt_at"], Value::Null);
    }
}
