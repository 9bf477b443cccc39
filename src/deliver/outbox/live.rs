//! The live calls of the call model, kept in the outbox's database so that
//! they are committed in the same transaction as the deliveries the same
//! events caused (`Outbox::submit_with_calls`, the outbox's side of
//! `DeliveryStore::commit_batch`): after a crash the stored calls are
//! exactly the model as of the last committed batch. The outbox does not
//! read the bytes (the normalizer's versioned snapshots).

use rusqlite::{params, Connection};

use super::{Outbox, Result};

/// One stored live call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCall {
    /// PBX (or push team) id.
    pub pbx: String,
    /// Session id.
    pub session: String,
    /// The normalizer's snapshot.
    pub snapshot: Vec<u8>,
}

/// A change to the stored live calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCallWrite {
    /// PBX (or push team) id.
    pub pbx: String,
    /// Session id.
    pub session: String,
    /// The new snapshot; `None`: the call is over, delete it.
    pub snapshot: Option<Vec<u8>>,
}

impl Outbox {
    /// Every stored live call, by PBX and session.
    pub async fn live_calls(&self) -> Result<Vec<LiveCall>> {
        self.run(false, |c, _| {
            let mut st =
                c.prepare("SELECT pbx, session, snapshot FROM live_calls ORDER BY pbx, session")?;
            let rows = st
                .query_map([], |r| {
                    Ok(LiveCall {
                        pbx: r.get(0)?,
                        session: r.get(1)?,
                        snapshot: r.get(2)?,
                    })
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// The stored live calls of one PBX, by session.
    pub async fn live_calls_of(&self, pbx: &str) -> Result<Vec<LiveCall>> {
        let pbx = pbx.to_string();
        self.run(false, move |c, _| {
            let mut st = c.prepare(
                "SELECT pbx, session, snapshot FROM live_calls WHERE pbx = ?1 ORDER BY session",
            )?;
            let rows = st
                .query_map([&pbx], |r| {
                    Ok(LiveCall {
                        pbx: r.get(0)?,
                        session: r.get(1)?,
                        snapshot: r.get(2)?,
                    })
                })?
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

/// Applies call writes inside the writer's transaction, with
/// `secure_delete` off while it does: a snapshot holds call facts, never a
/// credential, and zeroing the pages every replaced or deleted snapshot
/// frees (~1.6 KiB rows, one overflow page each) doubled the cost of a
/// burst's deletions. The connection's setting is back on before this
/// returns, whatever happened, so delivery rows stay zeroed when freed.
pub(super) fn write(c: &Connection, calls: &[LiveCallWrite], now: f64) -> Result<()> {
    if calls.is_empty() {
        return Ok(());
    }
    c.execute_batch("PRAGMA secure_delete = OFF")?;
    let wrote = write_rows(c, calls, now);
    let restored = c.execute_batch("PRAGMA secure_delete = ON");
    wrote?;
    restored?;
    Ok(())
}

fn write_rows(c: &Connection, calls: &[LiveCallWrite], now: f64) -> Result<()> {
    let mut put = c.prepare_cached(
        "INSERT OR REPLACE INTO live_calls (pbx, session, snapshot, updated_at) \
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut del = c.prepare_cached("DELETE FROM live_calls WHERE pbx = ?1 AND session = ?2")?;
    for w in calls {
        match &w.snapshot {
            Some(b) => put.execute(params![w.pbx, w.session, b, now])?,
            None => del.execute(params![w.pbx, w.session])?,
        };
    }
    Ok(())
}
