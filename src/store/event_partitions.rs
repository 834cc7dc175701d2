//! The event log's partitions (`user_event` is partitioned by range of `created_at`; see the
//! migration `2026-12-02-000001_event_log_partitions` and docs/architecture.md). DDL here is
//! built from our own timestamps and names (`[a-z0-9_]` only), never from client input; the
//! caller runs it inside a transaction with a short `lock_timeout` (`set_local_lock_timeout`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Nullable, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;

use super::Conn;

/// Catches every row no range partition covers, so a write never fails.
pub const DEFAULT_PARTITION: &str = "user_event_default";
const PREFIX: &str = "user_event_p";

/// One range partition: it holds the events with `from <= created_at < to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Partition {
    pub fn overlaps(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> bool {
        self.from < to && from < self.to
    }
}

/// The partition name for a range starting at `from` (UTC), e.g. `user_event_p20261130_000000`.
pub fn name_for(from: DateTime<Utc>) -> String {
    format!("{PREFIX}{}", from.format("%Y%m%d_%H%M%S"))
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    lo: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    hi: Option<DateTime<Utc>>,
}

/// The attached range partitions, oldest first (the DEFAULT partition is not among them).
/// Bounds are read back from PostgreSQL's own text of each partition's bound, which writes
/// the timestamps with their offset, so the casts are exact whatever the session's time zone.
pub async fn list(conn: &mut Conn) -> diesel::QueryResult<Vec<Partition>> {
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT c.relname::text AS name, \
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz AS lo, \
           (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz AS hi \
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'user_event'::regclass",
    )
    .load(conn)
    .await?;
    let mut parts: Vec<Partition> = rows
        .into_iter()
        .filter_map(|r| {
            Some(Partition {
                name: r.name,
                from: r.lo?,
                to: r.hi?,
            })
        })
        .collect();
    parts.sort_by_key(|p| p.from);
    Ok(parts)
}

/// Bounds how long the DDL of the current transaction may wait for a lock (see the caller).
pub async fn set_local_lock_timeout(conn: &mut Conn, t: Duration) -> diesel::QueryResult<()> {
    diesel::sql_query(format!("SET LOCAL lock_timeout = {}", t.as_millis().max(1)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Creates the partition for `[from, to)` and moves into it the rows of that range the DEFAULT
/// partition holds (usually none), in the caller's transaction; returns how many moved. The
/// table is created apart and then attached: ATTACH takes only a SHARE UPDATE EXCLUSIVE lock on
/// `user_event` (writers go on), where `CREATE TABLE .. PARTITION OF` would take ACCESS
/// EXCLUSIVE. ATTACH takes ACCESS EXCLUSIVE on the DEFAULT partition (to check it holds no row
/// of the range any more), held until commit: readers of the whole log wait that long (ms).
pub async fn create(
    conn: &mut Conn,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> diesel::QueryResult<usize> {
    let name = name_for(from);
    let (lo, hi) = (literal(from), literal(to));
    diesel::sql_query(format!(
        "CREATE TABLE {name} (LIKE user_event INCLUDING DEFAULTS, PRIMARY KEY (user_id, seq))"
    ))
    .execute(conn)
    .await?;
    let moved = diesel::sql_query(format!(
        "WITH m AS (DELETE FROM {DEFAULT_PARTITION} WHERE created_at >= {lo} AND created_at < {hi} \
           RETURNING user_id, seq, created_at, payload) \
         INSERT INTO {name} (user_id, seq, created_at, payload) SELECT * FROM m"
    ))
    .execute(conn)
    .await?;
    diesel::sql_query(format!(
        "ALTER TABLE user_event ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})"
    ))
    .execute(conn)
    .await?;
    Ok(moved)
}

/// Drops a partition and every event in it. Takes ACCESS EXCLUSIVE on `user_event` itself
/// (PostgreSQL must keep queries from planning against the partition being dropped), for the
/// few milliseconds the DROP takes; `DETACH .. CONCURRENTLY` would avoid that but is refused
/// while a DEFAULT partition exists.
pub async fn drop(conn: &mut Conn, p: &Partition) -> diesel::QueryResult<()> {
    // Only names this module gives (checked, as the name is written into the statement).
    if !p.name.starts_with(PREFIX)
        || !p
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(diesel::result::Error::QueryBuilderError(
            format!("not an event log partition: {:?}", p.name).into(),
        ));
    }
    diesel::sql_query(format!("DROP TABLE {}", p.name))
        .execute(conn)
        .await
        .map(|_| ())
}

#[derive(QueryableByName)]
struct Oldest {
    #[diesel(sql_type = Nullable<Timestamptz>)]
    at: Option<DateTime<Utc>>,
}

/// The oldest `created_at` at or after `floor` among the rows of the DEFAULT partition (its
/// `created_at` index: one index probe).
pub async fn oldest_in_default(
    conn: &mut Conn,
    floor: DateTime<Utc>,
) -> diesel::QueryResult<Option<DateTime<Utc>>> {
    let r: Oldest = diesel::sql_query(format!(
        "SELECT min(created_at) AS at FROM {DEFAULT_PARTITION} WHERE created_at >= $1"
    ))
    .bind::<Timestamptz, _>(floor)
    .get_result(conn)
    .await?;
    Ok(r.at)
}

/// Deletes up to `batch` of the DEFAULT partition's rows older than `before`; returns how many
/// went. Only rows written while no partition covered their time land there, so this is
/// normally a no-op; the inner scan walks the `created_at` index from its oldest end and the
/// rows are deleted by ctid (the log is append-only: no row changes its ctid meanwhile).
pub async fn prune_default(
    conn: &mut Conn,
    before: DateTime<Utc>,
    batch: i64,
) -> diesel::QueryResult<usize> {
    diesel::sql_query(format!(
        "DELETE FROM {DEFAULT_PARTITION} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {DEFAULT_PARTITION} \
         WHERE created_at < $1 ORDER BY created_at LIMIT $2))"
    ))
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(batch)
    .execute(conn)
    .await
}

/// A timestamptz literal for DDL (which takes no bind parameters): RFC 3339 with an explicit UTC
/// offset, so it means the same instant in any session time zone.
fn literal(t: DateTime<Utc>) -> String {
    format!(
        "'{}'",
        t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_and_literals_are_utc_and_sortable() {
        let t = Utc
            .with_ymd_and_hms(2026, 11, 30, 0, 0, 0)
            .single()
            .unwrap_or_default();
        assert_eq!(name_for(t), "user_event_p20261130_000000");
        assert_eq!(literal(t), "'2026-11-30T00:00:00.000000Z'");
    }
}
