//! `topic_retained`: each topic's retained value (the frame of its latest retained event).

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Jsonb, Text, Timestamptz};
use diesel_async::RunQueryDsl;

use super::Conn;

#[derive(diesel::QueryableByName, Debug, Clone)]
pub struct Retained {
    #[diesel(sql_type = Text)]
    pub topic: String,
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Jsonb)]
    pub frame: serde_json::Value,
    #[diesel(sql_type = Timestamptz)]
    pub expires_at: DateTime<Utc>,
}

/// Makes `frame` the topic's retained value. Event ids are UUIDv7 strings, which sort by
/// creation time: an older event committing after a newer one never replaces it.
pub async fn upsert(
    conn: &mut Conn,
    topic: &str,
    id: &str,
    frame: &serde_json::Value,
    expires_at: DateTime<Utc>,
) -> diesel::QueryResult<()> {
    write(conn, REPLACE_OLDER, topic, id, frame, expires_at).await?;
    Ok(())
}

/// The upsert of a retained value, replacing the stored one only `WHERE` the statement says.
const REPLACE_OLDER: &str = "INSERT INTO topic_retained (topic, id, frame, expires_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (topic) DO UPDATE SET id = EXCLUDED.id, \
     frame = EXCLUDED.frame, expires_at = EXCLUDED.expires_at WHERE topic_retained.id < EXCLUDED.id";
const REPLACE_EXPIRED: &str = "INSERT INTO topic_retained (topic, id, frame, expires_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (topic) DO UPDATE SET id = EXCLUDED.id, \
     frame = EXCLUDED.frame, expires_at = EXCLUDED.expires_at \
     WHERE topic_retained.expires_at <= now()";

/// Runs one of the upserts above; the rows written (0 or 1).
async fn write(
    conn: &mut Conn,
    sql: &'static str,
    topic: &str,
    id: &str,
    frame: &serde_json::Value,
    expires_at: DateTime<Utc>,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(sql)
        .bind::<Text, _>(topic)
        .bind::<Text, _>(id)
        .bind::<Jsonb, _>(frame)
        .bind::<Timestamptz, _>(expires_at)
        .execute(conn)
        .await
}

/// Makes `frame` the topic's retained value only if it has none or an expired one, in one
/// statement: a value written meanwhile (by anyone, even with an older id) is kept. Concurrent
/// callers serialise on the topic's row; exactly one of them writes. True if this call wrote.
pub async fn insert_if_unretained(
    conn: &mut Conn,
    topic: &str,
    id: &str,
    frame: &serde_json::Value,
    expires_at: DateTime<Utc>,
) -> diesel::QueryResult<bool> {
    Ok(write(conn, REPLACE_EXPIRED, topic, id, frame, expires_at).await? == 1)
}

/// The unexpired retained values of `topics` (those without one are absent).
pub async fn get_many(conn: &mut Conn, topics: &[String]) -> diesel::QueryResult<Vec<Retained>> {
    diesel::sql_query(
        "SELECT topic, id, frame, expires_at FROM topic_retained \
         WHERE topic = ANY($1) AND expires_at > now()",
    )
    .bind::<Array<Text>, _>(topics)
    .load(conn)
    .await
}

/// Deletes up to `batch` expired retained values.
pub async fn prune(conn: &mut Conn, batch: i64) -> diesel::QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM topic_retained WHERE topic IN \
         (SELECT topic FROM topic_retained WHERE expires_at <= now() LIMIT $1)",
    )
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}
