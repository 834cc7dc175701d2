//! `t_message_real_time`: one row per notification per recipient.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::schema::t_message_real_time as m;
use super::Conn;

/// A message as every API shows it (contract §4).
#[derive(Queryable, Selectable, Serialize, Debug, Clone, PartialEq, ToSchema)]
#[diesel(table_name = m)]
pub struct Message {
    pub id: Uuid,
    /// The recipient's `seq` of the `message.created` event.
    pub seq: i64,
    pub title: String,
    pub content: String,
    /// Free-form category (`comment`, `review`, `system`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The sender's user id; null for a system notification.
    pub send_user: Option<String>,
    pub send_time: DateTime<Utc>,
    /// Relative or absolute http(s); follow it only through the client's `safeUrl()`.
    pub skip_url: Option<String>,
    pub is_read: bool,
    pub read_at: Option<DateTime<Utc>>,
    /// Any JSON the creating service attached; opaque to notifyd.
    pub data: Option<serde_json::Value>,
}

/// A message as `GET /api/v1/me/messages` lists it: the message, and its inbox state when it is
/// archived or snoozed (contract §10).
#[derive(Queryable, Serialize, Debug, Clone, PartialEq, ToSchema)]
pub struct Listed {
    #[serde(flatten)]
    pub message: Message,
    /// When the user archived it; absent unless archived (`?archived=true` lists these).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<DateTime<Utc>>,
    /// Until when the user snoozed it; absent unless snoozed (`?snoozed=true` lists these).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snoozed_until: Option<DateTime<Utc>>,
}

/// Which of a user's messages a listing shows (contract §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shelf {
    /// The inbox: neither archived nor snoozed.
    Inbox,
    Archived,
    Snoozed,
    /// Archived or snoozed: everything out of the inbox.
    Aside,
}

/// A user's live messages on `shelf`, newest first, strictly below `before` (keyset on seq).
pub async fn list(
    conn: &mut Conn,
    user: &str,
    before: Option<i64>,
    limit: i64,
    unread_only: bool,
    shelf: Shelf,
) -> QueryResult<Vec<Listed>> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Bool, Nullable, Timestamptz};
    // Literal conditions for the columns `schema.rs` leaves out, each matching a partial index
    // (`t_message_real_time_user_archived`, `_user_snoozed`).
    let on_shelf = match shelf {
        Shelf::Inbox => "archived_at IS NULL AND snoozed_until IS NULL",
        Shelf::Archived => "archived_at IS NOT NULL",
        Shelf::Snoozed => "snoozed_until IS NOT NULL",
        Shelf::Aside => "(archived_at IS NOT NULL OR snoozed_until IS NOT NULL)",
    };
    let mut q = m::table
        .filter(m::to_user.eq(user))
        .filter(m::deleted_at.is_null())
        .filter(sql::<Bool>(on_shelf))
        .select((
            Message::as_select(),
            sql::<Nullable<Timestamptz>>("archived_at"),
            sql::<Nullable<Timestamptz>>("snoozed_until"),
        ))
        .order(m::seq.desc())
        .limit(limit)
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(m::seq.lt(b));
    }
    if unread_only {
        q = q.filter(m::is_read.eq(false));
    }
    q.load(conn).await
}

/// Marks every unread message in the user's inbox read (archived and snoozed ones, which do not
/// count, are left as they are); returns how many changed.
pub async fn mark_all_read(conn: &mut Conn, user: &str, now: DateTime<Utc>) -> QueryResult<usize> {
    diesel::update(
        m::table
            .filter(m::to_user.eq(user))
            .filter(m::is_read.eq(false))
            .filter(m::deleted_at.is_null())
            .filter(in_inbox()),
    )
    .set((m::is_read.eq(true), m::read_at.eq(now)))
    .execute(conn)
    .await
}

/// Neither archived nor snoozed (the columns `schema.rs` leaves out).
fn in_inbox() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql("(archived_at IS NULL AND snoozed_until IS NULL)")
}

/// Whether a row is out of the counts (read, archived or snoozed), and the seq it last arrived
/// at: what a removal needs to correct the counters (`inbox::commands`).
fn standing() -> (
    diesel::expression::SqlLiteral<diesel::sql_types::Bool>,
    diesel::expression::SqlLiteral<diesel::sql_types::BigInt>,
) {
    use diesel::dsl::sql;
    (
        sql("(is_read OR archived_at IS NOT NULL OR snoozed_until IS NOT NULL)"),
        sql("coalesce(arrived_seq, seq)"),
    )
}

/// Soft-deletes one of the user's live messages; returns `(id, uncounted, arrived_seq)` if it
/// existed (`uncounted`: read, archived or snoozed, so not in `unread`).
pub async fn soft_delete(
    conn: &mut Conn,
    user: &str,
    id: Uuid,
    now: DateTime<Utc>,
) -> QueryResult<Option<(Uuid, bool, i64)>> {
    diesel::update(
        m::table
            .filter(m::to_user.eq(user))
            .filter(m::id.eq(id))
            .filter(m::deleted_at.is_null()),
    )
    .set(m::deleted_at.eq(now))
    .returning((m::id, standing().0, standing().1))
    .get_result(conn)
    .await
    .optional()
}

/// Removes (for good) the user's live messages among `ids`; returns `(id, uncounted,
/// arrived_seq)` of each one removed (as `soft_delete`). Expiry uses it: the rows go at once, their event tells the client.
pub async fn remove(
    conn: &mut Conn,
    user: &str,
    ids: &[Uuid],
) -> QueryResult<Vec<(Uuid, bool, i64)>> {
    diesel::delete(
        m::table
            .filter(m::to_user.eq(user))
            .filter(m::id.eq_any(ids))
            .filter(m::deleted_at.is_null()),
    )
    .returning((m::id, standing().0, standing().1))
    .get_results(conn)
    .await
}

/// The recipient of message `id` if `service` created it (live or not): who a retract is for.
pub async fn recipient_for_service(
    conn: &mut Conn,
    id: Uuid,
    service: &str,
) -> QueryResult<Option<String>> {
    m::table
        .filter(m::id.eq(id))
        .filter(m::service.eq(service))
        .select(m::to_user)
        .get_result(conn)
        .await
        .optional()
}

/// Up to `limit` live messages sent before `cutoff`, oldest first, as `(id, recipient)`
/// (walks `t_message_real_time_live_send_time`).
pub async fn expired(
    conn: &mut Conn,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, String)>> {
    m::table
        .filter(m::deleted_at.is_null())
        .filter(m::send_time.lt(cutoff))
        .select((m::id, m::to_user))
        .order(m::send_time.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Soft-deleted rows are kept 24 hours (the `Idempotency-Key` window) before they are purged, so
/// a retried or replayed retract within that window still finds its message and answers 204.
/// Deletes up to `batch` soft-deleted rows (already out of every count and listing), oldest
/// deletion first; returns how many went. One short statement walking
/// `t_message_real_time_deleted`; by id, not ctid (rows of this table are updated).
pub async fn purge_deleted(conn: &mut Conn, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM t_message_real_time WHERE id = ANY(ARRAY(SELECT id FROM t_message_real_time \
         WHERE deleted_at < now() - interval '24 hours' ORDER BY deleted_at LIMIT $1))",
    )
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}

/// Every message row of `user`, live or soft-deleted (erasure).
pub async fn erase_user(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    diesel::delete(m::table.filter(m::to_user.eq(user)))
        .execute(conn)
        .await
}

/// Live unread messages in a user's inbox, neither archived nor snoozed (the ground truth behind
/// the `unread` counter).
pub async fn count_unread(conn: &mut Conn, user: &str) -> QueryResult<i64> {
    m::table
        .filter(m::to_user.eq(user))
        .filter(m::is_read.eq(false))
        .filter(m::deleted_at.is_null())
        .filter(in_inbox())
        .count()
        .get_result(conn)
        .await
}
