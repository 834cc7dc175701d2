//! `user_inbox_state`: per-user seq and exact unread/unseen counters. Every inbox change takes
//! the user's row first, so changes to one user are serialised and seqs have no holes.

use chrono::Utc;
use diesel::prelude::*;
use diesel::upsert::excluded;
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
}

#[derive(Insertable)]
#[diesel(table_name = s)]
struct Increment<'a> {
    user_id: &'a str,
    seq: i64,
    unread: i64,
    unseen: i64,
}

/// Adds `n` new unread, unseen messages for each `(user, n)` and returns each user's counters
/// after the change, in the order given. Callers pass users sorted so that concurrent batches
/// lock rows in the same order and cannot deadlock.
pub async fn add_created(
    conn: &mut Conn,
    counts: &[(String, i64)],
) -> QueryResult<Vec<(String, Counters)>> {
    debug_assert!(
        counts.windows(2).all(|w| w[0].0 < w[1].0),
        "users must be sorted and distinct"
    );
    let mut out = Vec::with_capacity(counts.len());
    // 4 binds per row; chunks keep each statement under the bind limit, and sorted chunks keep lock order.
    for chunk in counts.chunks(10_000) {
        let rows: Vec<Increment> = chunk
            .iter()
            .map(|(u, n)| Increment {
                user_id: u,
                seq: *n,
                unread: *n,
                unseen: *n,
            })
            .collect();
        let mut got: Vec<(String, Counters)> = diesel::insert_into(s::table)
            .values(&rows)
            .on_conflict(s::user_id)
            .do_update()
            .set((
                s::seq.eq(s::seq + excluded(s::seq)),
                s::unread.eq(s::unread + excluded(s::unread)),
                s::unseen.eq(s::unseen + excluded(s::unseen)),
                s::updated_at.eq(Utc::now()),
            ))
            .returning((s::user_id, Counters::as_returning()))
            .get_results(conn)
            .await?;
        got.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(got);
    }
    Ok(out)
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

/// The current seq of each of `users` that has one.
pub async fn seqs(conn: &mut Conn, users: &[String]) -> QueryResult<Vec<(String, i64)>> {
    s::table
        .filter(s::user_id.eq_any(users))
        .select((s::user_id, s::seq))
        .load(conn)
        .await
}
