//! `user_event`: the retained per-user change stream. The payload is the exact WebSocket frame.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::user_event as e;
use super::Conn;

const INSERT_CHUNK: usize = 5000;

#[derive(Insertable, Debug, Clone)]
#[diesel(table_name = e)]
pub struct NewEvent {
    pub user_id: String,
    pub seq: i64,
    pub payload: serde_json::Value,
}

pub async fn append(conn: &mut Conn, rows: &[NewEvent]) -> QueryResult<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        diesel::insert_into(e::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The user's events with `since < seq <= until`, oldest first, at most `limit`.
pub async fn range(
    conn: &mut Conn,
    user: &str,
    since: i64,
    until: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<(i64, serde_json::Value)>> {
    let mut q = e::table
        .filter(e::user_id.eq(user))
        .filter(e::seq.gt(since))
        .select((e::seq, e::payload))
        .order(e::seq.asc())
        .limit(limit)
        .into_boxed();
    if let Some(u) = until {
        q = q.filter(e::seq.le(u));
    }
    q.load(conn).await
}

/// Deletes up to `batch` of the oldest events older than `before`; returns how many went.
/// The inner scan walks the `created_at` index from its oldest end (ORDER BY), so each batch
/// reads only rows it deletes (plus index entries of rows deleted by the batch before, which the
/// first visit marks dead), never a sequential scan past already-deleted heap pages; the rows
/// are then deleted by ctid. `user_event` is append-only, so no row changes its ctid meanwhile.
pub async fn prune(conn: &mut Conn, before: DateTime<Utc>, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM user_event WHERE ctid = ANY(ARRAY(SELECT ctid FROM user_event \
         WHERE created_at < $1 ORDER BY created_at LIMIT $2))",
    )
    .bind::<diesel::sql_types::Timestamptz, _>(before)
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}
