//! `push_subscription`, `push_pending`, `push_received` (Web Push, contract §10; the worker is
//! `push::worker`). A pending push is written by the create statement (`create_rows`), in the
//! create's transaction, one per (event, subscription) of its recipient: it survives any node.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryResult, QueryableByName};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Conn;

/// A browser's `PushSubscription`, checked (`push::subscriptions`).
pub struct NewSubscription<'a> {
    pub user: &'a str,
    pub endpoint: &'a str,
    pub p256dh: &'a str,
    pub auth: &'a str,
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Stores a subscription and returns its id; the same endpoint of the same user again keeps its
/// id (and takes the new keys). An endpoint is one browser profile: another user's subscription
/// of it (someone logged out without unsubscribing) is removed, so their notifications never
/// reach the browser the new user now uses. Runs inside the caller's transaction, which holds
/// the user's lock (`lock_user`) so the per-user cap cannot be raced past.
pub async fn subscribe(conn: &mut Conn, id: Uuid, s: &NewSubscription<'_>) -> QueryResult<Uuid> {
    diesel::sql_query("DELETE FROM push_subscription WHERE endpoint = $1 AND user_id <> $2")
        .bind::<Text, _>(s.endpoint)
        .bind::<Text, _>(s.user)
        .execute(conn)
        .await?;
    let row: Id = diesel::sql_query(
        "INSERT INTO push_subscription (id, user_id, endpoint, p256dh, auth) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id, endpoint) DO UPDATE SET p256dh = excluded.p256dh, auth = excluded.auth \
         RETURNING id",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Text, _>(s.user)
    .bind::<Text, _>(s.endpoint)
    .bind::<Text, _>(s.p256dh)
    .bind::<Text, _>(s.auth)
    .get_result(conn)
    .await?;
    Ok(row.id)
}

/// Serialises `user`'s subscription changes until the transaction ends.
pub async fn lock_user(conn: &mut Conn, user: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended('push:' || $1, 0))")
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `user` already has `endpoint` (a re-subscription is no new subscription).
pub async fn has_endpoint(conn: &mut Conn, user: &str, endpoint: &str) -> QueryResult<bool> {
    let c: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM push_subscription WHERE user_id = $1 AND endpoint = $2",
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(endpoint)
    .get_result(conn)
    .await?;
    Ok(c.n > 0)
}

pub async fn count(conn: &mut Conn, user: &str) -> QueryResult<i64> {
    let c: Count =
        diesel::sql_query("SELECT count(*) AS n FROM push_subscription WHERE user_id = $1")
            .bind::<Text, _>(user)
            .get_result(conn)
            .await?;
    Ok(c.n)
}

/// Removes one of `user`'s subscriptions (and its pending pushes); `false`: no such one.
pub async fn unsubscribe(conn: &mut Conn, user: &str, id: Uuid) -> QueryResult<bool> {
    let n = diesel::sql_query("DELETE FROM push_subscription WHERE id = $1 AND user_id = $2")
        .bind::<SqlUuid, _>(id)
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    Ok(n > 0)
}

/// The push service said the subscription is gone (404/410).
pub async fn remove(conn: &mut Conn, id: Uuid) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM push_subscription WHERE id = $1")
        .bind::<SqlUuid, _>(id)
        .execute(conn)
        .await
}

/// Everything push keeps about `user` (an erasure).
pub async fn erase_user(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    let subs = diesel::sql_query("DELETE FROM push_subscription WHERE user_id = $1")
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    diesel::sql_query("DELETE FROM push_received WHERE user_id = $1")
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    Ok(subs)
}

/// Live sessions' acknowledgements, many users at once: each user's highest acknowledged seq,
/// kept only while they have a push waiting at or below it (anyone else's costs an index probe
/// and no write), and never past the inbox's own seq (a seq of an erased inbox, or a made-up
/// one, acknowledges nothing of the new one).
pub async fn record_received(
    conn: &mut Conn,
    users: &[String],
    seqs: &[i64],
) -> QueryResult<usize> {
    diesel::sql_query(
        "INSERT INTO push_received (user_id, seq) \
         SELECT u, s FROM unnest($1::text[], $2::int8[]) AS x(u, s) \
         WHERE EXISTS (SELECT 1 FROM push_pending p WHERE p.user_id = x.u AND p.seq <= x.s) \
           AND x.s <= (SELECT i.seq FROM user_inbox_state i WHERE i.user_id = x.u) \
         ON CONFLICT (user_id) DO UPDATE SET seq = GREATEST(push_received.seq, excluded.seq)",
    )
    .bind::<Array<Text>, _>(users)
    .bind::<Array<BigInt>, _>(seqs)
    .execute(conn)
    .await
}

#[derive(QueryableByName)]
pub struct Settled {
    /// `true`: a live session acknowledged it; `false`: read, deleted or gone meanwhile.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub acknowledged: bool,
}

/// Drops the pushes whose delay passed that need no push any more: acknowledged by a live
/// session, or their message was read, deleted, archived or snoozed meanwhile. Looks at the
/// 1,000 oldest due ones per call (a huge backlog is not rescanned whole every round).
pub async fn settle(conn: &mut Conn, delay_ms: i64) -> QueryResult<Vec<Settled>> {
    diesel::sql_query(
        "DELETE FROM push_pending p \
         WHERE (p.subscription_id, p.seq) IN ( \
             SELECT subscription_id, seq FROM push_pending \
             WHERE sending_since IS NULL AND created_at <= now() - $1 * interval '1 millisecond' \
             ORDER BY created_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
           AND (EXISTS (SELECT 1 FROM push_received r WHERE r.user_id = p.user_id AND r.seq >= p.seq) \
             OR NOT EXISTS (SELECT 1 FROM t_message_real_time m \
                            WHERE m.id = p.message_id AND NOT m.is_read AND m.deleted_at IS NULL \
                              AND m.archived_at IS NULL AND m.snoozed_until IS NULL)) \
         RETURNING EXISTS (SELECT 1 FROM push_received r WHERE r.user_id = p.user_id AND r.seq >= p.seq) \
           AS acknowledged",
    )
    .bind::<BigInt, _>(delay_ms)
    .get_results(conn)
    .await
}

/// A push taken to be sent: what the request needs.
#[derive(QueryableByName, Debug, Clone)]
pub struct Due {
    #[diesel(sql_type = SqlUuid)]
    pub subscription_id: Uuid,
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub endpoint: String,
    #[diesel(sql_type = Text)]
    pub p256dh: String,
    #[diesel(sql_type = Text)]
    pub auth: String,
    #[diesel(sql_type = SqlUuid)]
    pub message_id: Uuid,
    #[diesel(sql_type = Text)]
    pub title: String,
    #[diesel(sql_type = Text)]
    pub content: String,
    #[diesel(sql_type = Text)]
    pub kind: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub skip_url: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub unseen: i64,
}

/// Takes up to `limit` pushes whose delay (and backoff) passed and that no live session has
/// acknowledged, marking them in flight in the same statement: a push is sent by one node only,
/// and never twice (a node that dies mid-request leaves it to `drop_stale`, not to a resend).
pub async fn claim(conn: &mut Conn, delay_ms: i64, limit: i64) -> QueryResult<Vec<Due>> {
    diesel::sql_query(
        "WITH c AS ( \
           SELECT subscription_id, seq FROM push_pending p \
           WHERE p.sending_since IS NULL AND p.created_at <= now() - $1 * interval '1 millisecond' \
             AND (p.not_before IS NULL OR p.not_before <= now()) \
             AND NOT EXISTS (SELECT 1 FROM push_received r WHERE r.user_id = p.user_id AND r.seq >= p.seq) \
           ORDER BY p.created_at LIMIT $2 FOR UPDATE SKIP LOCKED \
         ), u AS ( \
           UPDATE push_pending p SET sending_since = now(), attempts = p.attempts + 1 \
           FROM c WHERE p.subscription_id = c.subscription_id AND p.seq = c.seq \
           RETURNING p.subscription_id, p.seq, p.attempts, p.created_at, p.user_id, p.message_id \
         ) \
         SELECT u.subscription_id, u.seq, u.attempts, u.created_at, s.endpoint, s.p256dh, s.auth, \
           m.id AS message_id, m.title, m.content, m.type AS kind, m.skip_url, \
           COALESCE(st.unseen, 0) AS unseen \
         FROM u JOIN push_subscription s ON s.id = u.subscription_id \
           JOIN t_message_real_time m ON m.id = u.message_id \
           LEFT JOIN user_inbox_state st ON st.user_id = u.user_id",
    )
    .bind::<BigInt, _>(delay_ms)
    .bind::<BigInt, _>(limit)
    .get_results(conn)
    .await
}

/// The push was accepted (or given up): it is done.
pub async fn done(conn: &mut Conn, subscription: Uuid, seq: i64) -> QueryResult<usize> {
    diesel::sql_query("DELETE FROM push_pending WHERE subscription_id = $1 AND seq = $2")
        .bind::<SqlUuid, _>(subscription)
        .bind::<BigInt, _>(seq)
        .execute(conn)
        .await
}

/// The push service refused it for now (429, 5xx, no answer): again after `after_ms`.
pub async fn retry(
    conn: &mut Conn,
    subscription: Uuid,
    seq: i64,
    after_ms: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        "UPDATE push_pending SET sending_since = NULL, \
           not_before = now() + $3 * interval '1 millisecond' \
         WHERE subscription_id = $1 AND seq = $2",
    )
    .bind::<SqlUuid, _>(subscription)
    .bind::<BigInt, _>(seq)
    .bind::<BigInt, _>(after_ms)
    .execute(conn)
    .await
}

/// Pushes in flight for longer than `older_than_ms`: their node died mid-request. Dropped, not
/// sent again (at most once per event and subscription).
pub async fn drop_stale(conn: &mut Conn, older_than_ms: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM push_pending \
         WHERE sending_since < now() - $1 * interval '1 millisecond'",
    )
    .bind::<BigInt, _>(older_than_ms)
    .execute(conn)
    .await
}
