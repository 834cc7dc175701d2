//! `user_inbox_state`: per-user seq and exact unread/unseen counters. Every inbox change takes
//! the user's row first, so changes to one user are serialised and seqs have no holes.

use chrono::Utc;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::user_inbox_state as s;
use super::Conn;

#[derive(
    Queryable, Selectable, Insertable, AsChangeset, Debug, Clone, Copy, PartialEq, Eq, Default,
)]
#[diesel(table_name = s)]
pub struct Counters {
    pub seq: i64,
    pub unread: i64,
    pub unseen: i64,
    pub seen_seq: i64,
    /// Which inbox of the user this is (`broker::envelope`); 0 when there is none.
    pub epoch: i64,
}

/// Locks the user's row for the rest of the transaction. `None`: the user never had a message.
pub async fn lock(conn: &mut Conn, user: &str) -> QueryResult<Option<Counters>> {
    s::table
        .find(user)
        .select(Counters::as_select())
        .for_update()
        .get_result(conn)
        .await
        .optional()
}

/// Locks, in user order, the rows of those of `users` that no other transaction holds, and
/// returns them; a row held elsewhere (a command, a create, another node's snooze waker) is
/// skipped, never waited for. For background work that may simply come back for it.
pub async fn lock_free(conn: &mut Conn, users: &[String]) -> QueryResult<Vec<(String, Counters)>> {
    s::table
        .filter(s::user_id.eq_any(users))
        .order(s::user_id)
        .select((s::user_id, Counters::as_select()))
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Current counters without locking (zeros for a user who never had a message).
pub async fn get(conn: &mut Conn, user: &str) -> QueryResult<Counters> {
    Ok(s::table
        .find(user)
        .select(Counters::as_select())
        .get_result(conn)
        .await
        .optional()?
        .unwrap_or_default())
}

pub async fn save(conn: &mut Conn, user: &str, c: Counters) -> QueryResult<()> {
    diesel::update(s::table.find(user))
        .set((c, s::updated_at.eq(Utc::now())))
        .execute(conn)
        .await?;
    Ok(())
}

/// The current seq and epoch of each of `users` that has an inbox.
pub async fn seqs(conn: &mut Conn, users: &[String]) -> QueryResult<Vec<(String, i64, i64)>> {
    s::table
        .filter(s::user_id.eq_any(users))
        .select((s::user_id, s::seq, s::epoch))
        .load(conn)
        .await
}

/// Removes the user's counters (erasure): their next change starts a new inbox at seq 1. A
/// create waiting on this row (`INSERT .. ON CONFLICT`) inserts a fresh one once this commits.
pub async fn erase(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    diesel::delete(s::table.find(user)).execute(conn).await
}

/// Gives every inbox a new epoch (after a database was restored from a backup: the seqs the
/// gateways and clients saw may then belong to a future the database no longer has). Returns
/// how many inboxes there are. In batches of `batch` rows, each its own statement, taking the
/// rows in user order as every create does (no deadlock with a multi-recipient create, and no
/// create waits on more than one batch).
pub async fn renew_epochs(conn: &mut Conn, batch: i64) -> QueryResult<usize> {
    use diesel::sql_types::{BigInt, Text};
    #[derive(QueryableByName)]
    struct Renewed {
        #[diesel(sql_type = Text)]
        user_id: String,
    }
    let mut after = String::new();
    let mut total = 0;
    loop {
        let rows: Vec<Renewed> = diesel::sql_query(
            "WITH b AS (SELECT user_id FROM user_inbox_state WHERE user_id > $1 \
               ORDER BY user_id LIMIT $2 FOR UPDATE) \
             UPDATE user_inbox_state s SET epoch = \
               greatest(s.epoch + 1, (floor(extract(epoch FROM clock_timestamp()) * 1000000))::bigint) \
             FROM b WHERE s.user_id = b.user_id RETURNING s.user_id",
        )
        .bind::<Text, _>(&after)
        .bind::<BigInt, _>(batch)
        .load(conn)
        .await?;
        total += rows.len();
        match rows.into_iter().map(|r| r.user_id).max() {
            Some(last) => after = last,
            None => return Ok(total),
        }
    }
}
