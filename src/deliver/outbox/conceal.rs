//! Rows stored before secrets were masked at rest (outbox schema 1, or a
//! rule set whose `env:` list grew): the daemon masks them at start with
//! the values it runs with, the way new rows are masked when rendered
//! (see [`crate::deliver::secret`]). The database pages are rewritten in
//! place (`secure_delete` overwrites what is freed); the checkpoint loop
//! then replaces the old pages in the file.

use std::sync::Arc;

use rusqlite::params;

use super::{Outbox, OutboxError, Result};
use crate::deliver::secret::{conceal_parts, PartsMut, Secrets};

/// id, URL, headers (JSON), body; `None` where a column cannot be read.
type StoredRow = (i64, Option<String>, Option<String>, Option<Vec<u8>>);

/// Rows read and rewritten per transaction (never holds enqueues up long).
const CHUNK: i64 = 500;

impl Outbox {
    /// Masks every secret still stored in clear in rows without secret
    /// places; returns how many rows were rewritten. Rows that cannot be
    /// decoded are left to the dispatcher's quarantine.
    pub async fn conceal_stored(&self, secrets: Arc<Secrets>) -> Result<usize> {
        if secrets.is_empty() {
            return Ok(0);
        }
        let mut after = 0i64;
        let mut total = 0;
        loop {
            let s = secrets.clone();
            let (last, n) = self
                .run(false, move |c, _| {
                    let mut read = c.prepare_cached(
                        "SELECT id, url, headers, body FROM deliveries \
                         WHERE id > ?1 AND secrets IS NULL ORDER BY id LIMIT ?2",
                    )?;
                    let rows: Vec<StoredRow> = read
                        .query_map(params![after, CHUNK], |r| {
                            Ok((r.get(0)?, r.get(1).ok(), r.get(2).ok(), r.get(3).ok()))
                        })?
                        .collect::<std::result::Result<_, _>>()?;
                    let mut write = c.prepare_cached(
                        "UPDATE deliveries SET url = ?2, headers = ?3, body = ?4, secrets = ?5 \
                         WHERE id = ?1",
                    )?;
                    let mut changed = 0;
                    let last = rows.last().map(|r| r.0);
                    for (id, url, headers, mut body) in rows {
                        let (Some(mut url), Some(headers)) = (url, headers) else {
                            continue;
                        };
                        let Ok(mut headers) =
                            serde_json::from_str::<Vec<(String, String)>>(&headers)
                        else {
                            continue;
                        };
                        let refs = conceal_parts(
                            PartsMut {
                                url: &mut url,
                                headers: &mut headers,
                                body: &mut body,
                            },
                            &s,
                        );
                        if refs.is_empty() {
                            continue;
                        }
                        let enc =
                            |e: serde_json::Error| OutboxError::Db(format!("cannot encode: {e}"));
                        write.execute(params![
                            id,
                            url,
                            serde_json::to_string(&headers).map_err(enc)?,
                            body,
                            serde_json::to_string(&refs).map_err(enc)?,
                        ])?;
                        changed += 1;
                    }
                    Ok((last, changed))
                })
                .await?;
            total += n;
            match last {
                Some(l) => after = l,
                None => break,
            }
        }
        Ok(total)
    }
}
