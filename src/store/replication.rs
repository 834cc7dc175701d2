//! Streaming replication as the servers report it: how far the primary has written its WAL,
//! and how far a replica has replayed it (for `db::replica`'s lag probe).

use diesel::sql_types::{Bool, Double, Nullable, Text};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::Conn;

#[derive(QueryableByName)]
struct Lsn {
    #[diesel(sql_type = Text)]
    lsn: String,
}

/// The primary's current WAL write position (`pg_lsn` as text, e.g. `0/3000148`).
pub async fn primary_lsn(conn: &mut Conn) -> diesel::QueryResult<String> {
    let r: Lsn = diesel::sql_query("SELECT pg_current_wal_lsn()::text AS lsn")
        .get_result(conn)
        .await?;
    Ok(r.lsn)
}

/// What a replica has replayed.
#[derive(QueryableByName, Debug, Clone, Copy, PartialEq)]
pub struct Replay {
    /// `false`: the server is no replica (a primary, or a replica that was promoted).
    #[diesel(sql_type = Bool)]
    pub in_recovery: bool,
    /// It has replayed the WAL at least up to the primary position it was asked about.
    #[diesel(sql_type = Bool)]
    pub caught_up: bool,
    /// Seconds from the commit time of the last transaction it replayed to its own clock's
    /// now. An upper bound of how stale it is, but only while the primary commits: on an idle
    /// primary it grows although nothing is missing (that is what `caught_up` is for). `None`:
    /// it has replayed no transaction since it started.
    #[diesel(sql_type = Nullable<Double>)]
    pub replay_age: Option<f64>,
}

/// How far this server (a replica) has replayed, against the primary's position `primary_lsn`
/// (from [`primary_lsn`]).
pub async fn replay(conn: &mut Conn, primary_lsn: &str) -> diesel::QueryResult<Replay> {
    diesel::sql_query(
        "SELECT pg_is_in_recovery() AS in_recovery, \
           COALESCE(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) AS caught_up, \
           extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8 \
             AS replay_age",
    )
    .bind::<Text, _>(primary_lsn)
    .get_result(conn)
    .await
}
