//! `outbox`: the relay's queue of committed-but-unpublished events.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Jsonb, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::schema::outbox as o;
use super::Conn;

const INSERT_CHUNK: usize = 10_000;

#[derive(Insertable)]
#[diesel(table_name = o)]
struct NewUserEntry<'a> {
    user_id: &'a str,
    seq: i64,
}

#[derive(Insertable)]
#[diesel(table_name = o)]
struct NewTopicEntry<'a> {
    topic: &'a str,
    payload: &'a serde_json::Value,
}

/// One claimed outbox entry, ready to publish.
#[derive(QueryableByName, Debug, Clone)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub topic: Option<String>,
    #[diesel(sql_type = Nullable<Jsonb>)]
    pub payload: Option<serde_json::Value>,
}

/// Queues the user events `(user, seq)` (their payloads live in `user_event`).
pub async fn enqueue_user_events(conn: &mut Conn, entries: &[(&str, i64)]) -> QueryResult<()> {
    for chunk in entries.chunks(INSERT_CHUNK) {
        let rows: Vec<NewUserEntry> = chunk
            .iter()
            .map(|(u, s)| NewUserEntry {
                user_id: u,
                seq: *s,
            })
            .collect();
        diesel::insert_into(o::table)
            .values(&rows)
            .execute(conn)
            .await?;
    }
    Ok(())
}

pub async fn enqueue_topic_event(
    conn: &mut Conn,
    topic: &str,
    payload: &serde_json::Value,
) -> QueryResult<i64> {
    diesel::insert_into(o::table)
        .values(NewTopicEntry { topic, payload })
        .returning(o::id)
        .get_result(conn)
        .await
}

/// Locks the oldest `limit` entries (by id) and returns them with their payloads. Scanning from
/// the smallest id every time, instead of remembering a high-water mark, is what makes an entry
/// that commits late with a lower id impossible to skip. `SKIP LOCKED` keeps a stand-by relay
/// that briefly overlaps a leader from waiting on its rows.
pub async fn claim_batch(conn: &mut Conn, limit: i64) -> QueryResult<Vec<Claimed>> {
    diesel::sql_query(
        "SELECT o.id, o.user_id, o.topic, COALESCE(o.payload, e.payload) AS payload \
         FROM outbox o LEFT JOIN user_event e ON e.user_id = o.user_id AND e.seq = o.seq \
         ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}

pub async fn delete(conn: &mut Conn, ids: &[i64]) -> QueryResult<usize> {
    diesel::delete(o::table.filter(o::id.eq_any(ids)))
        .execute(conn)
        .await
}

#[derive(QueryableByName, Debug, Clone, Copy, Default)]
pub struct Backlog {
    #[diesel(sql_type = BigInt)]
    pub entries: i64,
    #[diesel(sql_type = Double)]
    pub oldest_age_s: f64,
}

pub async fn backlog(conn: &mut Conn) -> QueryResult<Backlog> {
    diesel::sql_query(
        "SELECT count(*)::bigint AS entries, \
         COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest_age_s FROM outbox",
    )
    .get_result(conn)
    .await
}
