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
