//! Reads for the admin API and the CLI (a read-only connection on a
//! blocking thread): rows with their secrets masked, counts.

use std::collections::BTreeMap;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::schema::{COLS, WAITING};
use super::{
    excerpt, DeliveryRow, ListFilter, Outbox, OutboxError, OutboxStats, Result, Status, EXCERPT_MAX,
};
use crate::metrics::metrics;
use crate::source::now_epoch;

impl Outbox {
    async fn read<R, F>(&self, f: F) -> Result<R>
    where
        R: Send + 'static,
        F: FnOnce(&Connection) -> Result<R> + Send + 'static,
    {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| OutboxError::Db(format!("reader task failed: {e}")))?
    }

    /// Rows matching a filter, newest first, without secrets.
    pub async fn list(&self, filter: ListFilter) -> Result<Vec<DeliveryRow>> {
        self.read(move |c| {
            let mut sql = format!("SELECT {COLS} FROM deliveries WHERE 1 = 1");
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(s) = filter.status {
                sql.push_str(" AND status = ?");
                args.push(s.as_str().to_string().into());
            }
            if let Some(t) = filter.target {
                sql.push_str(" AND target = ?");
                args.push(t.into());
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push((filter.limit.min(i64::MAX as usize) as i64).into());
            let mut st = c.prepare(&sql)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(args), admin_row)?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// One row, without secrets.
    pub async fn get(&self, id: i64) -> Result<Option<DeliveryRow>> {
        self.read(move |c| {
            Ok(c.query_row(
                &format!("SELECT {COLS} FROM deliveries WHERE id = ?1"),
                params![id],
                admin_row,
            )
            .optional()?)
        })
        .await
    }

    /// Counts by state; also refreshes the `outbox_depth` and
    /// `outbox_oldest_age_seconds` gauges, and per target
    /// `outbox_waiting` and `outbox_oldest_waiting_age_seconds`.
    pub async fn stats(&self) -> Result<OutboxStats> {
        let s = self
            .read(|c| {
                let mut s = OutboxStats::default();
                let mut st = c.prepare("SELECT status, COUNT(*) FROM deliveries GROUP BY status")?;
                let mut rows = st.query([])?;
                while let Some(r) = rows.next()? {
                    let status = lossy(r, 0).unwrap_or_default();
                    let n: i64 = r.get(1)?;
                    let n = n.max(0) as u64;
                    match Status::parse(&status) {
                        Some(Status::Pending) => s.pending = n,
                        Some(Status::Inflight) => s.inflight = n,
                        Some(Status::Done) => s.done = n,
                        Some(Status::Dead) => s.dead = n,
                        Some(Status::Expired) => s.expired = n,
                        None => {}
                    }
                }
                let oldest: Option<f64> = c
                    .query_row(
                        "SELECT MIN(e) FROM (\
                           SELECT (SELECT enqueued_at FROM deliveries WHERE status = 'pending' ORDER BY id LIMIT 1) AS e \
                           UNION ALL \
                           SELECT (SELECT enqueued_at FROM deliveries WHERE status = 'inflight' ORDER BY id LIMIT 1))",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                s.oldest_pending_age = oldest.map(|t| (now_epoch() - t).max(0.0));
                let mut st = c.prepare(&format!(
                    "SELECT target, COUNT(*), MIN(enqueued_at) FROM deliveries WHERE {WAITING} GROUP BY target"
                ))?;
                let mut rows = st.query([])?;
                let now = now_epoch();
                let mut by_target = BTreeMap::new();
                while let Some(r) = rows.next()? {
                    let t = lossy(r, 0).unwrap_or_default();
                    let n: i64 = r.get(1)?;
                    let oldest = lossy_f64(r, 2);
                    let n = n.max(0) as u64;
                    by_target.insert(t.clone(), (n, oldest.map_or(0.0, |o| (now - o).max(0.0))));
                    s.waiting_by_target.insert(t, n);
                }
                Ok((s, by_target))
            })
            .await?;
        let (s, by_target) = s;
        let m = metrics();
        m.set_outbox_by_target(&by_target);
        m.outbox_depth.set((s.pending + s.inflight) as i64);
        m.outbox_oldest_age_seconds
            .set(s.oldest_pending_age.unwrap_or(0.0));
        Ok(s)
    }
}

/// Whether a header or query parameter name looks like it carries a
/// credential (its value is masked in every output).
pub fn sensitive_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    if n == "idempotency-key" {
        return false;
    }
    [
        "auth",
        "token",
        "secret",
        "key",
        "password",
        "passwd",
        "signature",
        "cookie",
        "session",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// Masks values of credential-like query parameters (`?api_key=…`).
pub fn mask_url(url: &str) -> String {
    let Some((base, rest)) = url.split_once('?') else {
        return url.to_string();
    };
    let (query, frag) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if sensitive_name(k) => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    let mut out = format!("{base}?{}", masked.join("&"));
    if let Some(f) = frag {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Column `i` as text, whatever the file holds there (a damaged page must
/// not make the whole listing fail: it shows as replacement characters).
fn lossy(r: &Row<'_>, i: usize) -> Option<String> {
    match r.get_ref(i).ok()? {
        ValueRef::Null => None,
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(String::from_utf8_lossy(b).into_owned()),
        ValueRef::Integer(n) => Some(n.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
    }
}

fn lossy_f64(r: &Row<'_>, i: usize) -> Option<f64> {
    match r.get_ref(i).ok()? {
        ValueRef::Real(f) => Some(f),
        ValueRef::Integer(n) => Some(n as f64),
        _ => None,
    }
}

fn admin_row(r: &Row<'_>) -> rusqlite::Result<DeliveryRow> {
    let text = |i| lossy(r, i).unwrap_or_default();
    let headers: Vec<(String, String)> = serde_json::from_str(&text(8)).unwrap_or_default();
    let body: Option<Vec<u8>> = match r.get_ref(9)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => Some(b.to_vec()),
        _ => None,
    };
    let status = text(14);
    let attempts = match r.get_ref(15)? {
        ValueRef::Integer(n) => n.clamp(0, u32::MAX as i64) as u32,
        _ => 0,
    };
    Ok(DeliveryRow {
        id: r.get(0)?,
        target: text(1),
        rule: text(2),
        session_id: text(3),
        pbx: text(4),
        event_id: text(5),
        method: text(6),
        url: mask_url(&text(7)),
        headers: headers
            .into_iter()
            .map(|(k, v)| {
                let v = if sensitive_name(&k) {
                    "***".to_string()
                } else {
                    v
                };
                (k, v)
            })
            .collect(),
        body_len: body.as_ref().map_or(0, Vec::len),
        body_excerpt: body.map(|b| {
            let end = b.len().min(EXCERPT_MAX);
            excerpt(&String::from_utf8_lossy(&b[..end]))
        }),
        idempotency_key: lossy(r, 10),
        created_at: lossy_f64(r, 11).unwrap_or(0.0),
        expires_at: lossy_f64(r, 12),
        enqueued_at: lossy_f64(r, 13).unwrap_or(0.0),
        status: Status::parse(&status).unwrap_or(Status::Dead),
        attempts,
        next_attempt_at: lossy_f64(r, 16).unwrap_or(0.0),
        last_status: lossy(r, 17),
        last_error: lossy(r, 18).or_else(|| lossy(r, 20)),
        updated_at: lossy_f64(r, 19).unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking() {
        assert_eq!(
            mask_url("https://crm/x?a=1&api_key=s3&Token=t#frag"),
            "https://crm/x?a=1&api_key=***&Token=***#frag"
        );
        assert_eq!(mask_url("https://crm/x"), "https://crm/x");
        assert!(sensitive_name("Authorization"));
        assert!(sensitive_name("X-Api-Key"));
        assert!(!sensitive_name("Content-Type"));
        let long = "é".repeat(2000);
        let e = excerpt(&long);
        assert!(e.len() <= EXCERPT_MAX && e.is_char_boundary(e.len()));
    }
}
