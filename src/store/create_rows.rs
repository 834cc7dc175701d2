//! The whole insert of a create in ONE statement: the recipients' counters
//! (`user_inbox_state`), the `t_message_real_time` rows, their `user_event` rows and their
//! `outbox` entries. One round trip whatever the number of rows (arrays bound with `UNNEST`),
//! so a create without an `Idempotency-Key` needs no BEGIN/COMMIT of its own: a single
//! statement is atomic in PostgreSQL's implicit transaction.
//!
//! Each row's seq, unread and unseen come from its user's counters after the upsert minus how
//! many of that user's rows follow it in the request (`back`), so a user's rows take the seqs
//! (old, new] in request order, as the caller computed `back`. Users are passed sorted and
//! distinct: every create locks counter rows in the same order (no deadlock) and the upsert
//! never meets one user twice.
//!
//! The event payload is the `message.created` frame, built here from the entry's message
//! template (the view without `id` and `seq`, serialised once per entry by the caller) plus the
//! row's id and counters: the same JSON the caller would have built per row, without shipping
//! each row's frame over the wire. The `send_time` in the template is the serialised `send_time`
//! bound here, so row and frame agree.

use chrono::{DateTime, Utc};
use diesel::sql_types::{
    Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::QueryableByName;
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Conn;

/// Public so the benchmark runs this exact statement under `pgbench` (benches/load.rs).
pub const SQL: &str = "\
WITH e AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
    WITH ORDINALITY AS e(title, content, kind, send_user, skip_url, data, tmpl, i)
), r AS (
  SELECT * FROM unnest($8::int4[], $9::text[], $10::int8[], $11::uuid[])
    WITH ORDINALITY AS r(entry, to_user, back, id, ord)
), c AS (
  INSERT INTO user_inbox_state AS s (user_id, seq, unread, unseen)
  SELECT u, n, n, n FROM unnest($12::text[], $13::int8[]) AS x(u, n)
  ON CONFLICT (user_id) DO UPDATE SET seq = s.seq + excluded.seq,
    unread = s.unread + excluded.unread, unseen = s.unseen + excluded.unseen, updated_at = now()
  RETURNING user_id, seq, unread, unseen
), w AS MATERIALIZED (
  SELECT r.ord, r.id, r.to_user, c.seq - r.back AS seq, c.unread - r.back AS unread,
    c.unseen - r.back AS unseen, e.title, e.content, e.kind, e.send_user, e.skip_url, e.data, e.tmpl
  FROM r JOIN c ON c.user_id = r.to_user JOIN e ON e.i = r.entry
), m AS (
  INSERT INTO t_message_real_time
    (id, to_user, seq, title, content, type, send_user, send_time, skip_url, data, service, broadcast_id)
  SELECT id, to_user, seq, title, content, kind, send_user, $14, skip_url, data, $15, $16 FROM w
), ev AS (
  INSERT INTO user_event (user_id, seq, payload)
  SELECT to_user, seq, jsonb_build_object('type', 'message.created', 'seq', seq, 'unread', unread,
    'unseen', unseen, 'message', tmpl || jsonb_build_object('id', id, 'seq', seq)) FROM w
), o AS (
  INSERT INTO outbox (user_id, seq) SELECT to_user, seq FROM w ORDER BY ord
)
SELECT seq, unread, unseen FROM w ORDER BY ord";

/// One entry's message, shared by all its recipients' rows.
pub struct Entry<'a> {
    pub title: &'a str,
    pub content: &'a str,
    pub kind: &'a str,
    pub send_user: Option<&'a str>,
    pub skip_url: Option<&'a str>,
    pub data: Option<&'a serde_json::Value>,
    /// The message view minus `id` and `seq` (see the module comment).
    pub template: &'a serde_json::Value,
}

/// The rows, in request order: entry number (1-based, as `WITH ORDINALITY` counts), recipient,
/// id, and how many of the same recipient's rows come after this one in the request.
pub struct Rows<'a> {
    pub entry: Vec<i32>,
    pub to_user: Vec<&'a str>,
    pub back: Vec<i64>,
    pub id: Vec<Uuid>,
}

/// A row's counters after the create, as its frame carries them.
#[derive(QueryableByName, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowCounters {
    #[diesel(sql_type = BigInt)]
    pub seq: i64,
    #[diesel(sql_type = BigInt)]
    pub unread: i64,
    #[diesel(sql_type = BigInt)]
    pub unseen: i64,
}

/// Runs the statement; `users`/`counts` are the distinct recipients, sorted, and their row
/// counts. Returns each row's counters in request order.
#[allow(clippy::too_many_arguments)]
pub async fn insert(
    conn: &mut Conn,
    entries: &[Entry<'_>],
    rows: &Rows<'_>,
    users: &[&str],
    counts: &[i64],
    send_time: DateTime<Utc>,
    service: &str,
    broadcast: Option<Uuid>,
) -> diesel::QueryResult<Vec<RowCounters>> {
    debug_assert!(
        users.windows(2).all(|w| w[0] < w[1]),
        "users must be sorted and distinct"
    );
    // Entries are few (at most 1,000), so collecting their columns costs nothing next to rows.
    let title: Vec<&str> = entries.iter().map(|e| e.title).collect();
    let content: Vec<&str> = entries.iter().map(|e| e.content).collect();
    let kind: Vec<&str> = entries.iter().map(|e| e.kind).collect();
    let send_user: Vec<Option<&str>> = entries.iter().map(|e| e.send_user).collect();
    let skip_url: Vec<Option<&str>> = entries.iter().map(|e| e.skip_url).collect();
    let data: Vec<Option<&serde_json::Value>> = entries.iter().map(|e| e.data).collect();
    let template: Vec<&serde_json::Value> = entries.iter().map(|e| e.template).collect();
    diesel::sql_query(SQL)
        .bind::<Array<Text>, _>(&title)
        .bind::<Array<Text>, _>(&content)
        .bind::<Array<Text>, _>(&kind)
        .bind::<Array<Nullable<Text>>, _>(&send_user)
        .bind::<Array<Nullable<Text>>, _>(&skip_url)
        .bind::<Array<Nullable<Jsonb>>, _>(&data)
        .bind::<Array<Jsonb>, _>(&template)
        .bind::<Array<Integer>, _>(&rows.entry)
        .bind::<Array<Text>, _>(&rows.to_user)
        .bind::<Array<BigInt>, _>(&rows.back)
        .bind::<Array<SqlUuid>, _>(&rows.id)
        .bind::<Array<Text>, _>(users)
        .bind::<Array<BigInt>, _>(counts)
        .bind::<Timestamptz, _>(send_time)
        .bind::<Text, _>(service)
        .bind::<Nullable<SqlUuid>, _>(broadcast)
        .load(conn)
        .await
}
