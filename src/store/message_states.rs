//! A message's inbox states (contract §10): read, archived, snoozed, and the seq at which it
//! last arrived in the inbox. Each change is one statement that locks the rows it changes and
//! returns every changed row's standing before and after, so the caller corrects the user's
//! counters from what really changed (`inbox::commands`), never from what was asked.
//!
//! A row counts in `unread` while it is live, unread, not archived and not snoozed; in `unseen`
//! too when it arrived (`coalesce(arrived_seq, seq)`) after the bell was last opened.

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, BigInt, Bool, Text, Timestamptz};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Conn;

/// One changed row: how it stood in the counts before the change and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub id: Uuid,
    pub before: Standing,
    pub after: Standing,
}

/// A row's part in the counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Live, not archived, not snoozed.
    pub in_inbox: bool,
    pub unread: bool,
    /// The seq it last arrived at.
    pub arrived: i64,
}

/// The change, with what it needs.
#[derive(Debug, Clone)]
pub enum Change<'a> {
    /// Unread ones among `ids` become read at `now`.
    Read { ids: &'a [Uuid], now: DateTime<Utc> },
    /// Read ones among `ids` become unread, arriving again at `seq`.
    Unread { ids: &'a [Uuid], seq: i64 },
    /// Ones among `ids` not archived are archived at `now` (a snooze on them is dropped: an
    /// archived message never wakes into the inbox).
    Archive { ids: &'a [Uuid], now: DateTime<Utc> },
    /// Archived ones among `ids` come back unread, arriving again at `seq`.
    Unarchive { ids: &'a [Uuid], seq: i64 },
    /// Ones among `ids` not archived are snoozed until `until` (a new time for a snoozed one).
    Snooze {
        ids: &'a [Uuid],
        until: DateTime<Utc>,
    },
    /// Up to `limit` snoozed ones whose time has come (by the database's clock, the one clock
    /// all nodes share) come back unread, arriving again at `seq`, soonest first.
    Wake { seq: i64, limit: i64 },
}

/// The statement: lock the rows the change selects (in id order), change them, and return each
/// one's standing before (from the locked snapshot `o`) and after.
fn statement(select: &str, set: &str) -> String {
    format!(
        "WITH o AS (SELECT id, (archived_at IS NULL AND snoozed_until IS NULL) AS in_inbox, \
           NOT is_read AS unread, coalesce(arrived_seq, seq) AS arrived \
           FROM t_message_real_time WHERE to_user = $1 AND deleted_at IS NULL AND {select} \
           ORDER BY id FOR UPDATE) \
         UPDATE t_message_real_time m SET {set} FROM o WHERE m.id = o.id \
         RETURNING m.id, o.in_inbox AS was_in_inbox, o.unread AS was_unread, o.arrived AS was_arrived, \
           (m.archived_at IS NULL AND m.snoozed_until IS NULL) AS in_inbox, NOT m.is_read AS unread, \
           coalesce(m.arrived_seq, m.seq) AS arrived"
    )
}

/// Applies `change` to `user`'s messages; returns the rows it changed (ids of other users'
/// messages, or of rows already in the asked state, match nothing). The caller holds the
/// user's counter row (`inbox_state::lock`), so no other change to these rows runs meanwhile.
pub async fn apply(
    conn: &mut Conn,
    user: &str,
    change: Change<'_>,
) -> diesel::QueryResult<Vec<Changed>> {
    use diesel::sql_query;
    let rows: Vec<Row> = match change {
        Change::Read { ids, now } => {
            sql_query(statement(
                "id = ANY($2) AND NOT is_read",
                "is_read = true, read_at = $3",
            ))
            .bind::<Text, _>(user)
            .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
            .bind::<Timestamptz, _>(now)
            .load(conn)
            .await?
        }
        Change::Unread { ids, seq } => {
            sql_query(statement(
                "id = ANY($2) AND is_read",
                "is_read = false, read_at = NULL, arrived_seq = $3",
            ))
            .bind::<Text, _>(user)
            .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
            .bind::<BigInt, _>(seq)
            .load(conn)
            .await?
        }
        Change::Archive { ids, now } => {
            sql_query(statement(
                "id = ANY($2) AND archived_at IS NULL",
                "archived_at = $3, snoozed_until = NULL",
            ))
            .bind::<Text, _>(user)
            .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
            .bind::<Timestamptz, _>(now)
            .load(conn)
            .await?
        }
        Change::Unarchive { ids, seq } => {
            sql_query(statement(
                "id = ANY($2) AND archived_at IS NOT NULL",
                "archived_at = NULL, is_read = false, read_at = NULL, arrived_seq = $3",
            ))
            .bind::<Text, _>(user)
            .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
            .bind::<BigInt, _>(seq)
            .load(conn)
            .await?
        }
        Change::Snooze { ids, until } => {
            sql_query(statement(
                "id = ANY($2) AND archived_at IS NULL AND snoozed_until IS DISTINCT FROM $3",
                "snoozed_until = $3",
            ))
            .bind::<Text, _>(user)
            .bind::<Array<diesel::sql_types::Uuid>, _>(ids)
            .bind::<Timestamptz, _>(until)
            .load(conn)
            .await?
        }
        Change::Wake { seq, limit } => {
            sql_query(statement(
                "snoozed_until <= now() AND id = ANY(ARRAY(SELECT id FROM t_message_real_time \
                   WHERE to_user = $1 AND deleted_at IS NULL AND snoozed_until <= now() \
                   ORDER BY snoozed_until, id LIMIT $3))",
                "snoozed_until = NULL, is_read = false, read_at = NULL, arrived_seq = $2",
            ))
            .bind::<Text, _>(user)
            .bind::<BigInt, _>(seq)
            .bind::<BigInt, _>(limit)
            .load(conn)
            .await?
        }
    };
    Ok(rows.into_iter().map(Row::into_changed).collect())
}

/// The users with a snooze that is due, at most `limit` of them, in user order (the order in
/// which every multi-user change takes counter rows).
pub async fn due_users(conn: &mut Conn, limit: i64) -> diesel::QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = Text)]
        to_user: String,
    }
    let rows: Vec<Due> = diesel::sql_query(
        "SELECT DISTINCT to_user FROM (SELECT to_user FROM t_message_real_time \
           WHERE snoozed_until <= now() AND deleted_at IS NULL ORDER BY snoozed_until LIMIT $1 * 8) d \
         ORDER BY to_user LIMIT $1",
    )
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.to_user).collect())
}

/// A returned row as the statement names its columns.
#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    id: Uuid,
    #[diesel(sql_type = Bool)]
    was_in_inbox: bool,
    #[diesel(sql_type = Bool)]
    was_unread: bool,
    #[diesel(sql_type = BigInt)]
    was_arrived: i64,
    #[diesel(sql_type = Bool)]
    in_inbox: bool,
    #[diesel(sql_type = Bool)]
    unread: bool,
    #[diesel(sql_type = BigInt)]
    arrived: i64,
}

impl Row {
    fn into_changed(self) -> Changed {
        Changed {
            id: self.id,
            before: Standing {
                in_inbox: self.was_in_inbox,
                unread: self.was_unread,
                arrived: self.was_arrived,
            },
            after: Standing {
                in_inbox: self.in_inbox,
                unread: self.unread,
                arrived: self.arrived,
            },
        }
    }
}
