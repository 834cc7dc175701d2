//! `outbox`: the relay's queue of committed-but-unpublished events.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Integer, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::schema::outbox as o;
use super::Conn;
use crate::broker::envelope::{Envelope, Head};

const INSERT_CHUNK: usize = 10_000;

/// An entry with its envelope, the text the relay publishes (`broker::envelope`).
#[derive(Insertable)]
#[diesel(table_name = o)]
struct NewEntry<'a> {
    user_id: Option<&'a str>,
    seq: Option<i64>,
    topic: Option<&'a str>,
    envelope: String,
}

/// One claimed outbox entry, ready to publish: its payload as the exact JSON text to send (no
/// `serde_json::Value` round trip on the relay), and how long ago it was committed.
#[derive(QueryableByName, Debug, Clone)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    pub user_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub topic: Option<String>,
    /// None: a user entry queued without its frame (by an older version) whose event was
    /// already pruned: nothing left to say.
    #[diesel(sql_type = Nullable<Text>)]
    pub payload: Option<String>,
    /// Seconds from the entry's `created_at` (its writer's transaction start, so about its
    /// commit) to the claim, on the database's clock.
    #[diesel(sql_type = Double)]
    pub age_s: f64,
}

/// Which slice of the outbox a relay partition owns: entries whose user (or, for topic entries,
/// topic) hashes to `index` modulo `count`. All events of one user (one topic) fall in one
/// partition, so each keeps its order while partitions run side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    pub const ALL: Partition = Partition { index: 0, count: 1 };

    /// The SQL condition selecting this partition's rows (both numbers come from the
    /// configuration, never from a client). `hashtext` is signed: shifted into 0..2^32 first.
    fn condition(&self) -> String {
        if self.count <= 1 {
            "TRUE".into()
        } else {
            format!(
                "mod(hashtext(COALESCE(user_id, topic))::bigint + 2147483648, {}) = {}",
                self.count, self.index
            )
        }
    }
}

/// Queues the user events `(user, envelope)`. The envelope carries the frame written to
/// `user_event`, so the relay never reads the event log (`claim_and_delete`).
pub async fn enqueue_user_events(
    conn: &mut Conn,
    entries: &[(&str, &Envelope)],
) -> QueryResult<()> {
    for chunk in entries.chunks(INSERT_CHUNK) {
        let rows: Vec<NewEntry> = chunk
            .iter()
            .map(|(u, env)| NewEntry {
                user_id: Some(u),
                seq: Some(match env.head {
                    Head::User { seq, .. } => seq,
                    _ => 0,
                }),
                topic: None,
                envelope: env.encode(),
            })
            .collect();
        diesel::insert_into(o::table)
            .values(&rows)
            .execute(conn)
            .await?;
    }
    Ok(())
}

#[derive(Insertable)]
#[diesel(table_name = o)]
struct NewUserNotice<'a> {
    user_id: &'a str,
    seq: i64,
    payload: &'a serde_json::Value,
    envelope: String,
}

/// Queues `Envelope::erased()` on the user's channel: not an event of their stream (no seq of
/// its own: stored as seq 0, which no event has). It is relayed in order with the user's
/// events: same partition, and outbox ids follow commit order for one user because every change
/// of theirs takes their counter row first.
///
/// With `legacy`, the notice as versions before the envelope sent it, in `payload`: a relay of
/// such a version, still leading during a rolling upgrade (or after a roll-back), reads only
/// `frame`/`payload` and would otherwise drop the notice, and the sessions it should reset would
/// take the new inbox's first seqs for duplicates.
pub async fn enqueue_user_notice(
    conn: &mut Conn,
    user: &str,
    legacy: &serde_json::Value,
) -> QueryResult<()> {
    diesel::insert_into(o::table)
        .values(NewUserNotice {
            user_id: user,
            seq: 0,
            payload: legacy,
            envelope: Envelope::erased().encode(),
        })
        .execute(conn)
        .await?;
    Ok(())
}

/// Every queued entry of `user` (erasure): nothing of theirs is published after it commits.
/// An entry the relay has claimed is locked: this waits for that batch to be published.
pub async fn erase_user(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    diesel::delete(o::table.filter(o::user_id.eq(user)))
        .execute(conn)
        .await
}

/// Queues a topic event's envelope (`Envelope::topic`).
pub async fn enqueue_topic_event(conn: &mut Conn, topic: &str, env: &Envelope) -> QueryResult<i64> {
    diesel::insert_into(o::table)
        .values(NewEntry {
            user_id: None,
            seq: None,
            topic: Some(topic),
            envelope: env.encode(),
        })
        .returning(o::id)
        .get_result(conn)
        .await
}

/// Claims the oldest `limit` entries (by id) of partition `part` and returns them with their
/// payloads as JSON text, ordered by id, in ONE statement that also deletes them: the caller
/// publishes inside the same transaction and commits only then, so a failed publish (rollback)
/// leaves every entry in place. Scanning from the smallest id every time, instead of remembering
/// a high-water mark, is what makes an entry that commits late with a lower id impossible to
/// skip. `SKIP LOCKED` keeps a stand-by relay that briefly overlaps a leader from waiting on its
/// rows. `DELETE ... RETURNING` has no order of its own, hence the final `ORDER BY`.
///
/// `id = ANY(ARRAY(...))`, not `id IN (...)`: with `IN` PostgreSQL hash-joins the claimed ids
/// against a sequential scan of the whole outbox, which made each batch cost O(backlog) (measured:
/// 51 ms instead of 17 ms per 500-entry batch with 100,000 waiting).
///
/// Every entry carries its envelope (`broker::envelope`: a header line and the frame, written by
/// the create statement, `enqueue_user_events` and `enqueue_topic_event`), published as it is:
/// no join with `user_event` (one index lookup per entry) and no JSON on the relay. Entries
/// queued by versions before the envelope, during a rolling upgrade, have a `frame` or a
/// `payload` instead, or only point at their event, which a subquery looks up; they go out as
/// plain frames, which gateways still read. `COALESCE` evaluates each fallback for such entries
/// alone.
pub async fn claim_and_delete(
    conn: &mut Conn,
    limit: i64,
    part: Partition,
) -> QueryResult<Vec<Claimed>> {
    Claim {
        head: format!(
            "WITH c AS ( \
               DELETE FROM outbox WHERE id = ANY(ARRAY( \
                 SELECT id FROM outbox WHERE {} ORDER BY id LIMIT ",
            part.condition()
        ),
        limit,
    }
    .load(conn)
    .await
}

/// The claim's text after its one parameter (the limit).
const CLAIM_TAIL: &str = " FOR UPDATE SKIP LOCKED)) \
       RETURNING id, user_id, seq, topic, envelope, frame, payload, created_at) \
     SELECT c.id, c.user_id, c.topic, COALESCE(c.envelope, c.frame, c.payload::text, \
         (SELECT e.payload::text FROM user_event e WHERE e.user_id = c.user_id AND e.seq = c.seq)) AS payload, \
       EXTRACT(EPOCH FROM clock_timestamp() - c.created_at)::float8 AS age_s \
     FROM c ORDER BY c.id";

/// The claim as a query diesel keeps prepared on the relay's connection (its statement cache,
/// keyed by the text, which is fixed per partition). `sql_query` is never cached, so every
/// batch made PostgreSQL parse and plan this statement again: CPU taken from the creates it
/// shares the database with, once per batch, and batches are small when the load is light.
struct Claim {
    head: String,
    limit: i64,
}

impl diesel::query_builder::QueryId for Claim {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for Claim {
    type SqlType = diesel::sql_types::Untyped;
}

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for Claim {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> QueryResult<()> {
        out.push_sql(&self.head);
        out.push_bind_param::<BigInt, _>(&self.limit)?;
        out.push_sql(CLAIM_TAIL);
        Ok(())
    }
}

/// Settings for the relay's own session (never a pooled connection), once per connection:
/// - `synchronous_commit = off`: its commits do not wait for the WAL flush. Its transactions
///   only delete published entries; if a database crash loses such a delete, the entries are
///   published again, which receivers drop by seq / topic event id. Saves an fsync per batch.
/// - `enable_seqscan = off`: a partition's filter (`Partition::condition`) is an expression the
///   planner cannot estimate (it guesses 0.5% of rows), so it chose to scan and sort the whole
///   outbox instead of walking the primary key until it has `limit` rows (measured: 62 ms
///   instead of 1 ms to pick 500 of 100,000 with 4 partitions). The session runs nothing else
///   that a sequential scan would serve better (the backlog count walks the primary key).
pub async fn tune_relay_session(conn: &mut Conn) -> QueryResult<()> {
    diesel::sql_query("SET synchronous_commit = off")
        .execute(conn)
        .await?;
    diesel::sql_query("SET enable_seqscan = off")
        .execute(conn)
        .await
        .map(|_| ())
}

/// One partition's share of the outbox: entries waiting and the age of the oldest (0 when none).
#[derive(QueryableByName, Debug, Clone, Copy, Default, PartialEq)]
pub struct Backlog {
    #[diesel(sql_type = Integer)]
    pub partition: i32,
    #[diesel(sql_type = BigInt)]
    pub entries: i64,
    #[diesel(sql_type = Double)]
    pub oldest_age_s: f64,
}

/// The backlog of each of `count` partitions (`Partition`'s hash), partitions with nothing
/// waiting included (entries 0, age 0). One pass over the outbox: cheap while it is near empty,
/// as in service; O(backlog) when the relays are behind (about 20 ms per 100,000 entries on the
/// 2-core test machine), which is when the figure is wanted.
pub async fn backlog(conn: &mut Conn, count: u32) -> QueryResult<Vec<Backlog>> {
    let count = count.max(1);
    diesel::sql_query(format!(
        "WITH b AS ( \
           SELECT COALESCE(mod(hashtext(COALESCE(user_id, topic))::bigint + 2147483648, {count})::int, 0) AS p, \
             count(*)::bigint AS entries, min(created_at) AS oldest FROM outbox GROUP BY 1) \
         SELECT k AS partition, COALESCE(b.entries, 0)::bigint AS entries, \
           COALESCE(EXTRACT(EPOCH FROM now() - b.oldest), 0)::float8 AS oldest_age_s \
         FROM generate_series(0, {last}) k LEFT JOIN b ON b.p = k ORDER BY k",
        last = count - 1
    ))
    .load(conn)
    .await
}
