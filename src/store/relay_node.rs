//! `relay_node`: the live relay processes and the partitions each leads (`outbox::share`).
//!
//! Every time is the database's (`now()`), so the nodes' clocks never need to agree.

use diesel::sql_types::{Array, Double, Integer, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::Conn;

/// A live relay: its id and how many partitions it led at its last heartbeat.
#[derive(QueryableByName, Debug, Clone, PartialEq, Eq)]
pub struct Live {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Integer)]
    pub led: i32,
}

/// This relay's heartbeat: upserts its row (seen now, from this session, the partition count it
/// runs, the partitions it leads) and returns every live relay, itself included: seen within
/// `live_s` seconds and its heartbeat session still open. The session test finds a relay whose
/// process died at the next heartbeat of the others (PostgreSQL ends the backend as soon as the
/// socket closes) instead of after `live_s`; a relay behind a silent path (its socket still open)
/// drops out after `live_s`. Behind a transaction pooler the session may be another client's or
/// gone: the first only leaves the `live_s` bound, the second counts a live relay out for less
/// than a heartbeat (it beats again within a second), moving nothing but free partitions.
/// One statement, one round trip; the data-modifying CTE is not visible to the outer query, so
/// this node is added to the list by hand.
pub async fn beat(
    conn: &mut Conn,
    id: &str,
    partitions: i32,
    led: &[i32],
    live_s: f64,
) -> diesel::QueryResult<Vec<Live>> {
    diesel::sql_query(
        "WITH me AS ( \
           INSERT INTO relay_node (id, seen_at, pid, partitions, led) \
           VALUES ($1, now(), pg_backend_pid(), $2, $3) \
           ON CONFLICT (id) DO UPDATE SET seen_at = now(), pid = pg_backend_pid(), partitions = $2, led = $3) \
         SELECT id, cardinality(led) AS led FROM relay_node r \
           WHERE id <> $1 AND seen_at > now() - make_interval(secs => $4) \
             AND EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.pid = r.pid) \
         UNION ALL SELECT $1, cardinality($3)",
    )
    .bind::<Text, _>(id)
    .bind::<Integer, _>(partitions)
    .bind::<Array<Integer>, _>(led)
    .bind::<Double, _>(live_s)
    .load(conn)
    .await
}

/// A relay that stops cleanly leaves at once (the others need not wait out its last heartbeat).
pub async fn leave(conn: &mut Conn, id: &str) -> diesel::QueryResult<()> {
    diesel::sql_query("DELETE FROM relay_node WHERE id = $1")
        .bind::<Text, _>(id)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Forgets relays not seen for `older_s` seconds (processes that died; restarted ones come back
/// under a new id). Returns how many rows went.
pub async fn prune(conn: &mut Conn, older_s: f64) -> diesel::QueryResult<usize> {
    diesel::sql_query("DELETE FROM relay_node WHERE seen_at < now() - make_interval(secs => $1)")
        .bind::<Double, _>(older_s)
        .execute(conn)
        .await
}
