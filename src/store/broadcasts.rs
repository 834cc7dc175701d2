//! `broadcast`: announcements to every known user, and how far each has got.
//!
//! Recipients are the rows of `user_inbox_state` visible to the statement that accepted the
//! broadcast: `accept` stores that statement's snapshot (`pg_current_snapshot()`) beside the
//! count it saw, and `next_recipients` keeps a row only when the transaction that created it
//! (`first_xid`) is visible in that snapshot. See the migration for why this is exact.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::schema::broadcast as b;
use super::Conn;
use crate::model::input::MessageInput;

/// What `GET /api/v1/broadcasts/{id}` shows.
#[derive(Queryable, Selectable, Debug, Clone, PartialEq, Eq)]
#[diesel(table_name = b)]
pub struct Progress {
    pub id: Uuid,
    pub total: i64,
    pub created: i64,
    /// Recipients who muted the announcement's type (no notification for them).
    pub skipped: i64,
    pub done_at: Option<DateTime<Utc>>,
}

/// A running broadcast, locked by the worker's transaction.
#[derive(QueryableByName, Debug, Clone)]
pub struct Claimed {
    #[diesel(sql_type = SqlUuid)]
    pub id: Uuid,
    #[diesel(sql_type = Text)]
    pub service: String,
    #[diesel(sql_type = Text)]
    pub title: String,
    #[diesel(sql_type = Text)]
    pub content: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub send_user: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub skip_url: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub data: Option<serde_json::Value>,
    /// The accepting statement's snapshot, as text (`xmin:xmax:xip,...`).
    #[diesel(sql_type = Text)]
    pub snapshot: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub cursor_user: Option<String>,
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = BigInt)]
    total: i64,
}

#[derive(QueryableByName)]
struct UserId {
    #[diesel(sql_type = Text)]
    user_id: String,
}

/// Records a new broadcast of `msg` (its recipients are ignored). The snapshot and the count
/// come from the same statement, so `total` is exactly the number of recipients.
pub async fn accept(
    conn: &mut Conn,
    id: Uuid,
    service: &str,
    msg: &MessageInput,
) -> QueryResult<i64> {
    let got: Total = diesel::sql_query(
        "INSERT INTO broadcast (id, service, title, content, type, send_user, skip_url, data, \
         snapshot, total) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, pg_current_snapshot(), count(*) \
         FROM user_inbox_state RETURNING total",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(service)
    .bind::<Text, _>(&msg.title)
    .bind::<Text, _>(&msg.content)
    .bind::<Text, _>(&msg.kind)
    .bind::<Nullable<Text>, _>(&msg.send_user)
    .bind::<Nullable<Text>, _>(&msg.skip_url)
    .bind::<Nullable<Jsonb>, _>(&msg.data)
    .get_result(conn)
    .await?;
    Ok(got.total)
}

/// Running broadcasts of `service` (the per-service limit).
pub async fn running_of(conn: &mut Conn, service: &str) -> QueryResult<i64> {
    b::table
        .filter(b::service.eq(service))
        .filter(b::done_at.is_null())
        .count()
        .get_result(conn)
        .await
}

/// Running broadcasts of every service (the gauge).
pub async fn running(conn: &mut Conn) -> QueryResult<i64> {
    b::table
        .filter(b::done_at.is_null())
        .count()
        .get_result(conn)
        .await
}

/// Serialises acceptances of one service for the rest of the transaction, so its running
/// count cannot be overtaken between the check and the insert.
pub async fn lock_service(conn: &mut Conn, service: &str) -> QueryResult<()> {
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('notifyd broadcast ' || $1, 0))",
    )
    .bind::<Text, _>(service)
    .execute(conn)
    .await
    .map(|_| ())
}

/// One broadcast of `service`; another service's is `None`, as if it did not exist.
pub async fn progress(conn: &mut Conn, id: Uuid, service: &str) -> QueryResult<Option<Progress>> {
    b::table
        .filter(b::id.eq(id))
        .filter(b::service.eq(service))
        .select(Progress::as_select())
        .get_result(conn)
        .await
        .optional()
}

/// Locks the oldest running broadcast no other transaction holds. `SKIP LOCKED`: two workers
/// never work one broadcast at once, and neither waits for the other.
pub async fn claim(conn: &mut Conn) -> QueryResult<Option<Claimed>> {
    diesel::sql_query(
        "SELECT id, service, title, content, type AS kind, send_user, skip_url, data, \
         snapshot::text AS snapshot, cursor_user FROM broadcast WHERE done_at IS NULL \
         ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .get_result(conn)
    .await
    .optional()
}

/// The next `limit` recipients after `after` (user id order; the primary key's range scan).
pub async fn next_recipients(
    conn: &mut Conn,
    snapshot: &str,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<String>> {
    const KNOWN: &str = "(first_xid IS NULL OR pg_visible_in_snapshot(first_xid, $1::pg_snapshot))";
    let rows: Vec<UserId> = match after {
        Some(after) => {
            diesel::sql_query(format!(
                "SELECT user_id FROM user_inbox_state WHERE user_id > $3 AND {KNOWN} \
                 ORDER BY user_id LIMIT $2"
            ))
            .bind::<Text, _>(snapshot)
            .bind::<BigInt, _>(limit)
            .bind::<Text, _>(after)
            .load(conn)
            .await?
        }
        None => {
            diesel::sql_query(format!(
                "SELECT user_id FROM user_inbox_state WHERE {KNOWN} ORDER BY user_id LIMIT $2"
            ))
            .bind::<Text, _>(snapshot)
            .bind::<BigInt, _>(limit)
            .load(conn)
            .await?
        }
    };
    Ok(rows.into_iter().map(|r| r.user_id).collect())
}

/// Records a batch: the cursor is now `cursor` (the last user done), `created` grows by `n`,
/// `skipped` by the recipients who muted its type, and `done` marks the broadcast finished.
pub async fn advance(
    conn: &mut Conn,
    id: Uuid,
    cursor: Option<&str>,
    n: i64,
    skipped: i64,
    done: bool,
) -> QueryResult<()> {
    diesel::update(b::table.find(id))
        .set((
            b::cursor_user.eq(cursor),
            b::created.eq(b::created + n),
            b::skipped.eq(b::skipped + skipped),
            b::done_at.eq(done.then(Utc::now)),
        ))
        .execute(conn)
        .await?;
    Ok(())
}
