//! The database session itself, for the background tasks that hold one long-lived connection
//! (relay, housekeeper): its name, and the cluster-wide advisory locks that elect one of them.

use diesel::sql_types::{BigInt, Bool};
use diesel::QueryableByName;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// Names the session (`pg_stat_activity.application_name`) so operators, and the chaos
/// harness, can see which node holds which role.
pub async fn set_name(conn: &mut AsyncPgConnection, name: &str) -> diesel::QueryResult<()> {
    let name = name.replace('\'', "");
    diesel::sql_query(format!("SET application_name = '{name}'"))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Takes the session-level advisory lock `key` if nobody holds it; whether it is now ours.
/// It goes with the session, so a process or connection that dies releases it.
pub async fn try_lock(conn: &mut AsyncPgConnection, key: i64) -> diesel::QueryResult<bool> {
    let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(key)
        .get_result(conn)
        .await?;
    Ok(got.locked)
}

/// Gives the session-level advisory lock `key` back (a relay leader over its share hands its
/// partition on). Whether it was held.
pub async fn unlock(conn: &mut AsyncPgConnection, key: i64) -> diesel::QueryResult<bool> {
    let got: Locked = diesel::sql_query("SELECT pg_advisory_unlock($1) AS locked")
        .bind::<BigInt, _>(key)
        .get_result(conn)
        .await?;
    Ok(got.locked)
}

/// Commits on this session do not wait for the WAL flush. For the housekeeper: a crash can lose
/// only its last few commits, whole, and its work is then simply done again (rows past
/// retention are still past it). Saves an fsync per user on a large expiry.
pub async fn asynchronous_commit(conn: &mut AsyncPgConnection) -> diesel::QueryResult<()> {
    diesel::sql_query("SET synchronous_commit = off")
        .execute(conn)
        .await
        .map(|_| ())
}
