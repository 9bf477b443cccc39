//! The transactions, run on the writer thread inside a group commit.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::handoff::Claim;
use super::schema::{cols_sql, WAITING};
use super::writer::WriterState;
use super::OutboxError;
use super::{excerpt, ClaimWant, Claimed, EnqueueOutcome, PollResult, Result, Status};
use crate::deliver::DeliveryRequest;

pub(super) struct EnqueueDetail {
    pub(super) outcome: EnqueueOutcome,
    pub(super) inserted: BTreeMap<String, u64>,
    pub(super) duplicates: BTreeMap<String, u64>,
    pub(super) rejected: BTreeMap<String, u64>,
    /// Stored dead at once (`DeliveryRequest::refused`).
    pub(super) refused: BTreeMap<String, u64>,
    /// Ready heads claimed for the dispatcher's offered slots.
    pub(super) claim: Claim,
}

pub(super) fn insert_batch(
    c: &Connection,
    st: &mut WriterState,
    reqs: &[DeliveryRequest],
    now: f64,
) -> Result<EnqueueDetail> {
    let mut d = EnqueueDetail {
        outcome: EnqueueOutcome::default(),
        inserted: BTreeMap::new(),
        duplicates: BTreeMap::new(),
        rejected: BTreeMap::new(),
        refused: BTreeMap::new(),
        claim: Claim::default(),
    };
    let window_start = now - st.opts.dedupe_window.as_secs_f64();
    let mut event_dup = c.prepare_cached(&format!(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_event \
         WHERE target = ?1 AND event_id = ?2 AND {WAITING} LIMIT 1"
    ))?;
    let mut key_seen =
        c.prepare_cached("SELECT seen_at FROM dedupe WHERE target = ?1 AND key = ?2")?;
    let mut key_put = c.prepare_cached(
        "INSERT OR REPLACE INTO dedupe (target, key, seen_at) VALUES (?1, ?2, ?3)",
    )?;
    let mut key_status = c.prepare_cached(
        "SELECT status FROM deliveries INDEXED BY deliveries_key \
         WHERE target = ?1 AND idempotency_key = ?2 ORDER BY id DESC LIMIT 1",
    )?;
    let mut chain_busy = c.prepare_cached(&format!(
        "SELECT 1 FROM deliveries INDEXED BY deliveries_chain \
         WHERE target = ?1 AND session_id = ?2 AND {WAITING} LIMIT 1"
    ))?;
    let mut insert = c.prepare_cached(
        "INSERT INTO deliveries (target, rule, session_id, pbx, event_id, method, url, headers, \
         body, idempotency_key, created_at, expires_at, enqueued_at, status, head, attempts, \
         next_attempt_at, updated_at, secrets) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', ?14, 0, ?13, ?13, ?15)",
    )?;
    // A request that can never be sent is kept, dead, with the reason: it
    // is no head and never holds up the call's next delivery.
    let mut insert_refused = c.prepare_cached(
        "INSERT INTO deliveries (target, rule, session_id, pbx, event_id, method, url, headers, \
         body, idempotency_key, created_at, expires_at, enqueued_at, status, head, attempts, \
         next_attempt_at, last_status, last_error, updated_at, refused, secrets) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'dead', 0, 0, ?13, \
         'refused', ?14, ?13, ?14, ?15)",
    )?;
    for r in reqs {
        let dup_event = event_dup.exists(params![r.target, r.event_id])?;
        let dup_key = match &r.idempotency_key {
            Some(k) => key_seen
                .query_row(params![r.target, k], |row| row.get::<_, f64>(0))
                .optional()?
                .is_some_and(|seen| seen >= window_start),
            None => false,
        };
        if dup_event || dup_key {
            // What became of the earlier one (for reports such as backfill's
            // "already delivered" / "already queued").
            let earlier = match (&r.idempotency_key, dup_event) {
                (Some(k), false) => key_status
                    .query_row(params![r.target, k], |row| row.get::<_, String>(0))
                    .optional()?,
                _ => Some("pending".to_string()),
            };
            match earlier.as_deref().and_then(Status::parse) {
                Some(Status::Pending | Status::Inflight) => d.outcome.duplicates_waiting += 1,
                Some(Status::Done) => d.outcome.duplicates_delivered += 1,
                Some(Status::Dead | Status::Expired) => d.outcome.duplicates_failed += 1,
                None => d.outcome.duplicates_pruned += 1,
            }
            d.outcome.duplicates += 1;
            *d.duplicates.entry(r.target.clone()).or_default() += 1;
            continue;
        }
        if let Some(why) = &r.refused {
            if let Some(k) = &r.idempotency_key {
                key_put.execute(params![r.target, k, now])?;
            }
            let headers = serde_json::to_string(&r.headers)
                .map_err(|e| OutboxError::Db(format!("cannot encode headers: {e}")))?;
            insert_refused.execute(params![
                r.target,
                r.rule,
                r.session_id,
                r.pbx,
                r.event_id,
                r.method,
                r.url,
                headers,
                r.body,
                r.idempotency_key,
                r.created_at,
                r.expires_at,
                now,
                excerpt(why),
                secret_places(r)?,
            ])?;
            d.outcome.refused += 1;
            *d.refused.entry(r.target.clone()).or_default() += 1;
            continue;
        }
        if st.waiting >= st.opts.max_rows as i64 {
            d.outcome.rejected_full += 1;
            *d.rejected.entry(r.target.clone()).or_default() += 1;
            continue;
        }
        if let Some(k) = &r.idempotency_key {
            key_put.execute(params![r.target, k, now])?;
        }
        let head = !chain_busy.exists(params![r.target, r.session_id])?;
        let headers = serde_json::to_string(&r.headers)
            .map_err(|e| OutboxError::Db(format!("cannot encode headers: {e}")))?;
        insert.execute(params![
            r.target,
            r.rule,
            r.session_id,
            r.pbx,
            r.event_id,
            r.method,
            r.url,
            headers,
            r.body,
            r.idempotency_key,
            r.created_at,
            r.expires_at,
            now,
            head as i64,
            secret_places(r)?,
        ])?;
        st.waiting += 1;
        d.outcome.inserted += 1;
        *d.inserted.entry(r.target.clone()).or_default() += 1;
    }
    Ok(d)
}

/// The `secrets` column: where the rules masked secrets (NULL: nowhere).
fn secret_places(r: &DeliveryRequest) -> Result<Option<String>> {
    if r.secrets.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(&r.secrets)
        .map(Some)
        .map_err(|e| OutboxError::Db(format!("cannot encode secret places: {e}")))
}

/// Makes the oldest unfinished row of `(target, session)` its only head,
/// unless one of its rows is in flight (then no pending row may be a head
/// until that attempt ends).
pub(super) fn fix_head(c: &Connection, target: &str, session: &str) -> Result<()> {
    let busy = c
        .prepare_cached(&format!(
            "SELECT 1 FROM deliveries INDEXED BY deliveries_chain \
             WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
             AND status = 'inflight' LIMIT 1"
        ))?
        .exists(params![target, session])?;
    let first: Option<(i64, i64)> = if busy {
        None
    } else {
        c.prepare_cached(&format!(
            "SELECT id, head FROM deliveries INDEXED BY deliveries_chain \
             WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
             ORDER BY id LIMIT 1"
        ))?
        .query_row(params![target, session], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?
    };
    let keep = first.map(|f| f.0).unwrap_or(-1);
    c.prepare_cached(&format!(
        "UPDATE deliveries INDEXED BY deliveries_chain SET head = 0 \
         WHERE target = ?1 AND session_id = ?2 AND {WAITING} \
         AND status = 'pending' AND head = 1 AND id != ?3"
    ))?
    .execute(params![target, session, keep])?;
    if let Some((id, 0)) = first {
        c.prepare_cached("UPDATE deliveries SET head = 1 WHERE id = ?1")?
            .execute(params![id])?;
    }
    Ok(())
}

/// Dead rows back to pending (one id, or all when `id` is `None`).
pub(super) fn revive(c: &Connection, id: Option<i64>, now: f64) -> Result<usize> {
    const SET: &str = "UPDATE deliveries SET status = 'pending', head = 0, attempts = 0, \
                       next_attempt_at = ?1, updated_at = ?1 WHERE status = 'dead'";
    Ok(match id {
        Some(id) => c.execute(&format!("{SET} AND id = ?2"), params![now, id])?,
        None => c.execute(SET, params![now])?,
    })
}

/// A value read from a row, or what is wrong with the row.
type Decoded<T> = std::result::Result<T, String>;

/// Reads column `i` of a row as text; `Err` names the column when the
/// file holds something else there (a damaged page: invalid UTF-8, a
/// number where text belongs).
pub(super) fn text(r: &Row<'_>, i: usize, name: &str) -> std::result::Result<String, String> {
    match opt_text(r, i, name)? {
        Some(s) => Ok(s),
        None => Err(format!("column {name} is NULL")),
    }
}

pub(super) fn opt_text(
    r: &Row<'_>,
    i: usize,
    name: &str,
) -> std::result::Result<Option<String>, String> {
    match r.get_ref(i).map_err(|e| format!("column {name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(b) => std::str::from_utf8(b)
            .map(|s| Some(s.to_string()))
            .map_err(|_| format!("column {name} is not valid UTF-8")),
        other => Err(format!(
            "column {name} holds {:?}, not text",
            other.data_type()
        )),
    }
}

fn real(r: &Row<'_>, i: usize, name: &str) -> std::result::Result<f64, String> {
    opt_real(r, i, name)?.ok_or_else(|| format!("column {name} is NULL"))
}

fn opt_real(r: &Row<'_>, i: usize, name: &str) -> std::result::Result<Option<f64>, String> {
    match r.get_ref(i).map_err(|e| format!("column {name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Real(f) => Ok(Some(f)),
        ValueRef::Integer(n) => Ok(Some(n as f64)),
        other => Err(format!(
            "column {name} holds {:?}, not a number",
            other.data_type()
        )),
    }
}

fn int(r: &Row<'_>, i: usize, name: &str) -> std::result::Result<i64, String> {
    match r.get_ref(i).map_err(|e| format!("column {name}: {e}"))? {
        ValueRef::Integer(n) => Ok(n),
        other => Err(format!(
            "column {name} holds {:?}, not an integer",
            other.data_type()
        )),
    }
}

fn blob(r: &Row<'_>, i: usize, name: &str) -> std::result::Result<Option<Vec<u8>>, String> {
    match r.get_ref(i).map_err(|e| format!("column {name}: {e}"))? {
        ValueRef::Null => Ok(None),
        ValueRef::Blob(b) | ValueRef::Text(b) => Ok(Some(b.to_vec())),
        other => Err(format!(
            "column {name} holds {:?}, not bytes",
            other.data_type()
        )),
    }
}

/// Decodes a claimed row (`SELECT {COLS}`); `Err` says why it cannot be.
pub(super) fn claimed_row(r: &Row<'_>) -> std::result::Result<Claimed, String> {
    let headers = text(r, 8, "headers")?;
    let headers: Vec<(String, String)> = serde_json::from_str(&headers)
        .map_err(|e| format!("column headers is not a JSON list of pairs: {e}"))?;
    Ok(Claimed {
        id: int(r, 0, "id")?,
        target: text(r, 1, "target")?,
        rule: text(r, 2, "rule")?,
        session_id: text(r, 3, "session_id")?,
        pbx: text(r, 4, "pbx")?,
        event_id: text(r, 5, "event_id")?,
        method: text(r, 6, "method")?,
        url: text(r, 7, "url")?,
        headers,
        body: blob(r, 9, "body")?,
        idempotency_key: opt_text(r, 10, "idempotency_key")?,
        created_at: real(r, 11, "created_at")?,
        expires_at: opt_real(r, 12, "expires_at")?,
        attempts: int(r, 15, "attempts")?.clamp(0, u32::MAX as i64) as u32,
        refused: opt_text(r, 20, "refused")?,
        secrets: match opt_text(r, 21, "secrets")? {
            None => Vec::new(),
            Some(j) => serde_json::from_str(&j)
                .map_err(|e| format!("column secrets is not a list of secret places: {e}"))?,
        },
    })
}

/// Decodes every column of a row (`SELECT {COLS}`), the state too: what
/// `callhook outbox check` and `recover` call a sound row.
pub(super) fn row_is_sound(r: &Row<'_>) -> Decoded<()> {
    claimed_row(r)?;
    let status = text(r, 14, "status")?;
    if super::Status::parse(&status).is_none() {
        return Err(format!("column status holds {status:?}"));
    }
    real(r, 13, "enqueued_at")?;
    real(r, 16, "next_attempt_at")?;
    real(r, 19, "updated_at")?;
    opt_text(r, 17, "last_status")?;
    opt_text(r, 18, "last_error")?;
    Ok(())
}

/// Moves a row that cannot be decoded aside: dead, with the reason, and
/// its call's next delivery becomes the head. Returns whether it was
/// waiting.
fn quarantine(c: &Connection, id: i64, why: &str, now: f64) -> Result<bool> {
    let waiting: bool = c
        .prepare_cached(&format!("SELECT {WAITING} FROM deliveries WHERE id = ?1"))?
        .query_row(params![id], |r| r.get(0))
        .optional()?
        .unwrap_or(false);
    c.prepare_cached(
        "UPDATE deliveries SET status = 'dead', head = 0, last_status = 'damaged', \
         last_error = ?2, updated_at = ?3 WHERE id = ?1",
    )?
    .execute(params![
        id,
        excerpt(&format!(
            "this row cannot be decoded ({why}): the outbox file is damaged; see `callhook outbox check`"
        )),
        now
    ])?;
    repair_heads(c)?;
    Ok(waiting)
}

/// Gives every chain of waiting rows that has no head and nothing in
/// flight its head back (after a damaged row was moved aside, its chain key
/// may not have been readable).
pub(super) fn repair_heads(c: &Connection) -> Result<usize> {
    let orphans: Vec<(String, String)> = c
        .prepare_cached(
            "SELECT target, session_id FROM deliveries INDEXED BY deliveries_chain \
             WHERE status IN ('pending', 'inflight') GROUP BY target, session_id \
             HAVING MAX(head) = 0 AND SUM(status = 'inflight') = 0",
        )?
        .query_map([], |r| {
            Ok((
                text(r, 0, "target").unwrap_or_default(),
                text(r, 1, "session_id").unwrap_or_default(),
            ))
        })?
        .collect::<std::result::Result<_, _>>()?;
    for (t, s) in &orphans {
        fix_head(c, t, s)?;
    }
    Ok(orphans.len())
}

pub(super) fn poll_tx(
    c: &Connection,
    st: &mut WriterState,
    now: f64,
    wants: &[ClaimWant],
) -> Result<PollResult> {
    let mut out = PollResult::default();
    // 1. Expire what is past its freshness limit, heads or not (a non-head
    // that expired would never be sent anyway; expiring it early keeps the
    // call's chain short).
    let due: Vec<(i64, Decoded<(String, String)>)> = c
        .prepare_cached(
            "SELECT id, target, session_id FROM deliveries INDEXED BY deliveries_expiry \
             WHERE status = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?1 LIMIT 1000",
        )?
        .query_map(params![now], |r| {
            let key = text(r, 1, "target").and_then(|t| Ok((t, text(r, 2, "session_id")?)));
            Ok((r.get(0)?, key))
        })?
        .collect::<std::result::Result<_, _>>()?;
    let (due, damaged): (Vec<_>, Vec<_>) = due.into_iter().partition(|(_, k)| k.is_ok());
    for (id, why) in damaged {
        let why = why.err().unwrap_or_default();
        if quarantine(c, id, &why, now)? {
            st.waiting -= 1;
        }
        out.damaged.push((id, why));
    }
    let due: Vec<(i64, String, String)> = due
        .into_iter()
        .filter_map(|(id, k)| k.ok().map(|(t, s)| (id, t, s)))
        .collect();
    if !due.is_empty() {
        let mut upd = c.prepare_cached(
            "UPDATE deliveries SET status = 'expired', head = 0, updated_at = ?2 WHERE id = ?1",
        )?;
        let mut keys = BTreeSet::new();
        for (id, t, s) in due {
            upd.execute(params![id, now])?;
            st.waiting -= 1;
            keys.insert((t.clone(), s));
            out.expired.push((id, t));
        }
        for (t, s) in keys {
            fix_head(c, &t, &s)?;
        }
    }
    out.next_expiry = c
        .prepare_cached(
            "SELECT MIN(expires_at) FROM deliveries INDEXED BY deliveries_expiry \
             WHERE status = 'pending' AND expires_at IS NOT NULL",
        )?
        .query_row([], |r| r.get(0))?;
    // 2. Claim ready heads per target.
    let mut next = c.prepare_cached(
        "SELECT MIN(next_attempt_at) FROM deliveries INDEXED BY deliveries_ready \
         WHERE target = ?1 AND status = 'pending' AND head = 1",
    )?;
    for w in wants {
        if w.limit > 0 {
            claim_ready(
                c,
                st,
                &w.target,
                now,
                w.limit,
                &mut out.claimed,
                &mut out.damaged,
            )?;
        }
        if let Some(t) = next.query_row(params![w.target], |r| r.get::<_, Option<f64>>(0))? {
            out.next_ready.insert(w.target.clone(), t);
        }
    }
    Ok(out)
}

/// Claims up to `limit` ready heads of `target` (they become `inflight`),
/// oldest due first; rows that cannot be decoded are moved aside.
pub(super) fn claim_ready(
    c: &Connection,
    st: &mut WriterState,
    target: &str,
    now: f64,
    limit: usize,
    claimed: &mut Vec<Claimed>,
    damaged: &mut Vec<(i64, String)>,
) -> Result<()> {
    let mut select = c.prepare_cached(concat!(
        "SELECT ",
        cols_sql!(),
        " FROM deliveries INDEXED BY deliveries_ready \
         WHERE target = ?1 AND status = 'pending' AND head = 1 \
         AND next_attempt_at <= ?2 ORDER BY next_attempt_at, id LIMIT ?3"
    ))?;
    let mut mark = c.prepare_cached(
        "UPDATE deliveries SET status = 'inflight', updated_at = ?2 WHERE id = ?1",
    )?;
    let rows: Vec<(i64, Decoded<Claimed>)> = select
        .query_map(params![target, now, limit as i64], |r| {
            Ok((r.get(0)?, claimed_row(r)))
        })?
        .collect::<std::result::Result<_, _>>()?;
    for (id, row) in rows {
        match row {
            Ok(row) => {
                mark.execute(params![id, now])?;
                claimed.push(row);
            }
            Err(why) => {
                if quarantine(c, id, &why, now)? {
                    st.waiting -= 1;
                }
                damaged.push((id, why));
            }
        }
    }
    Ok(())
}
