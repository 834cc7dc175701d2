//! `idempotency_key`: per-service `Idempotency-Key`s, honoured for 24 hours.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::schema::idempotency_key as k;
use super::{Conn, JsonText};

pub const TTL_HOURS: i64 = 24;

pub enum Begin {
    /// First use of the key (or the old use expired): go ahead, then `finish`.
    Fresh,
    /// Same key, same body: answer with the first result.
    Replay(serde_json::Value),
    /// Same key, different body.
    Mismatch,
}

/// Claims `(service, key)` inside the caller's transaction. A concurrent request with the same
/// key waits on the row lock until this transaction ends, then sees the stored result.
pub async fn begin(
    conn: &mut Conn,
    service: &str,
    key: &str,
    request_hash: &str,
) -> QueryResult<Begin> {
    let inserted = diesel::insert_into(k::table)
        .values((
            k::service.eq(service),
            k::key.eq(key),
            k::request_hash.eq(request_hash),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        return Ok(Begin::Fresh);
    }
    let (hash, response, created_at): (String, Option<serde_json::Value>, DateTime<Utc>) = k::table
        .find((service, key))
        .select((k::request_hash, k::response, k::created_at))
        .for_update()
        .get_result(conn)
        .await?;
    if created_at < Utc::now() - Duration::hours(TTL_HOURS) {
        diesel::update(k::table.find((service, key)))
            .set((
                k::request_hash.eq(request_hash),
                k::response.eq(None::<serde_json::Value>),
                k::created_at.eq(Utc::now()),
            ))
            .execute(conn)
            .await?;
        return Ok(Begin::Fresh);
    }
    Ok(match response {
        Some(r) if hash == request_hash => Begin::Replay(r),
        _ => Begin::Mismatch,
    })
}

pub async fn finish(
    conn: &mut Conn,
    service: &str,
    key: &str,
    response: JsonText<'_>,
) -> QueryResult<()> {
    diesel::update(k::table.find((service, key)))
        .set(k::response.eq(response))
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn prune(conn: &mut Conn, batch: i64) -> QueryResult<usize> {
    diesel::sql_query(
        "DELETE FROM idempotency_key WHERE ctid = ANY(ARRAY(SELECT ctid FROM idempotency_key \
         WHERE created_at < now() - interval '24 hours' ORDER BY created_at LIMIT $1))",
    )
    .bind::<diesel::sql_types::BigInt, _>(batch)
    .execute(conn)
    .await
}

/// Erasure: drops the keys `user` used as a sender (`scope` is their direct-message service
/// name) and takes `user`'s entries out of every stored create answer that names them (in
/// `messages` or `skipped`), so a
/// replay no longer mentions them (the other recipients' entries stay, and a retry still
/// creates nothing). Scans the keys of the last 24 h: erasures are rare.
pub async fn erase_user(conn: &mut Conn, user: &str, scope: &str) -> QueryResult<usize> {
    use diesel::sql_types::Text;
    let dropped = diesel::delete(k::table.filter(k::service.eq(scope)))
        .execute(conn)
        .await?;
    // Out of `messages` (the rows created) and out of `skipped` (rows not created because they
    // muted the type): the same scrub of one array of the stored answer, by its key.
    let mut scrubbed = 0;
    for array in ["messages", "skipped"] {
        scrubbed += diesel::sql_query(format!(
            "UPDATE idempotency_key SET response = jsonb_set(response, '{{{array}}}', \
               (SELECT coalesce(jsonb_agg(m ORDER BY n), '[]'::jsonb) \
                FROM jsonb_array_elements(response->'{array}') WITH ORDINALITY AS x(m, n) \
                WHERE m->>'to_user' IS DISTINCT FROM $1)) \
             WHERE response @> jsonb_build_object('{array}', \
               jsonb_build_array(jsonb_build_object('to_user', $1::text)))"
        ))
        .bind::<Text, _>(user)
        .execute(conn)
        .await?;
    }
    Ok(dropped + scrubbed)
}
