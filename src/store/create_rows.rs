//! The whole insert of a create in ONE statement: the recipients' counters
//! (`user_inbox_state`), the `t_message_real_time` rows, their `user_event` rows, their
//! `outbox` entries, and a pending Web Push per row and subscription of its recipient
//! (`push_pending`: none when nobody subscribed, a join with an empty table, and none for a type
//! the recipient set `push: false` for). One round trip whatever the number of rows (arrays bound with `UNNEST`),
//! so a create without an `Idempotency-Key` needs no BEGIN/COMMIT of its own: a single
//! statement is atomic in PostgreSQL's implicit transaction.
//!
//! Each row's seq, unread and unseen come from its user's counters after the upsert minus how
//! many of that user's rows follow it in the request (`back`), so a user's rows take the seqs
//! (old, new] in request order, as the caller computed `back`. Users are passed sorted and
//! distinct: every create locks counter rows in the same order (no deadlock) and the upsert
//! never meets one user twice.
//!
//! Preferences (contract §10) are decided here, in the same statement, so no create can slip
//! between a `PUT /api/v1/me/preferences` and its effect: a row whose recipient set
//! `in_app: false` for its entry's type (`k`) is not written at all. Its recipient's counters
//! grow by the rows kept (a user with every row muted is not touched: no seq consumed), and a
//! kept row's `back` loses the muted rows of its user after it, so seqs stay contiguous. Only the
//! users with a muted row in this request go through the window that recounts `back`: the rest
//! (every row, when nobody muted anything) keep the caller's count, so a batch to 10,000 users
//! pays one primary-key probe per row and no sort by user (docs/decisions/0015). The rows kept
//! are returned with their position in the request (`ord`); the caller lists the others as
//! skipped.
//!
//! The event payload is the `message.created` frame, built here from the entry's message
//! template (the view without `id` and `seq`, serialised once per entry by the caller) plus the
//! row's id and counters: the same JSON the caller would have built per row, without shipping
//! each row's frame over the wire. The `send_time` in the template is the serialised `send_time`
//! bound here, so row and frame agree.
//!
//! The frame is built once (`f`), as text, by concatenation: the row's id and seq go first in
//! the message, then the template's fields (its text after the opening brace, which is what is
//! bound: cut in Rust once per entry, not by `substr` once per row). It is written
//! twice: parsed into the event log's `jsonb`, and in the outbox entry's envelope (the header
//! line `u <seq> <epoch> <commit time>` of `broker::envelope`, then the frame), which the relay
//! publishes as it is (see `store::outbox::claim_and_delete`), deleting the entry. Building
//! it with `jsonb_build_object` and `||` and turning it back into text for the relay cost the
//! database more per row than the whole rest of the relay's claim (docs/benchmarks.md, Relay).

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::Untyped;
use diesel::sql_types::{
    Array, BigInt, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
};
use diesel::{QueryResult, QueryableByName};
use diesel_async::RunQueryDsl;
use uuid::Uuid;

use super::Conn;

/// Public so the benchmark runs this exact statement under `pgbench` (benches/load.rs).
pub const SQL: &str = r#"WITH e AS (
  SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::text[])
    WITH ORDINALITY AS e(title, content, kind, send_user, skip_url, data, tmpl, i)
), q AS (
  SELECT * FROM unnest($8::int4[], $9::text[], $10::int8[], $11::uuid[])
    WITH ORDINALITY AS q(entry, to_user, back, id, ord)
), k AS MATERIALIZED (
  SELECT q.ord, q.to_user FROM q JOIN e ON e.i = q.entry
  JOIN user_type_preference t ON t.user_id = q.to_user AND t.type = e.kind AND NOT t.in_app
), r AS (
  SELECT entry, to_user, back, id, ord FROM q WHERE to_user NOT IN (SELECT to_user FROM k)
  UNION ALL
  SELECT entry, to_user, back, id, ord FROM (
    SELECT q.entry, q.to_user, q.back - count(k.ord) OVER (PARTITION BY q.to_user ORDER BY q.ord DESC
      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS back, q.id, q.ord, k.ord IS NOT NULL AS muted
    FROM q LEFT JOIN k ON k.ord = q.ord WHERE q.to_user IN (SELECT to_user FROM k)
  ) z WHERE NOT muted
), c AS (
  INSERT INTO user_inbox_state AS s (user_id, seq, unread, unseen)
  SELECT x.u, x.n - coalesce(y.n, 0), x.n - coalesce(y.n, 0), x.n - coalesce(y.n, 0)
  FROM unnest($12::text[], $13::int8[]) WITH ORDINALITY AS x(u, n, i)
  LEFT JOIN (SELECT to_user, count(*) AS n FROM k GROUP BY to_user) y ON y.to_user = x.u
  WHERE x.n > coalesce(y.n, 0) ORDER BY x.i
  ON CONFLICT (user_id) DO UPDATE SET seq = s.seq + excluded.seq,
    unread = s.unread + excluded.unread, unseen = s.unseen + excluded.unseen, updated_at = now()
  RETURNING user_id, seq, unread, unseen, epoch
), w AS MATERIALIZED (
  SELECT r.ord, r.id, r.to_user, c.seq - r.back AS seq, c.unread - r.back AS unread,
    c.unseen - r.back AS unseen, c.epoch, e.title, e.content, e.kind, e.send_user, e.skip_url, e.data, e.tmpl
  FROM r JOIN c ON c.user_id = r.to_user JOIN e ON e.i = r.entry
), m AS (
  INSERT INTO t_message_real_time
    (id, to_user, seq, title, content, type, send_user, send_time, skip_url, data, service, broadcast_id)
  SELECT id, to_user, seq, title, content, kind, send_user, $14, skip_url, data, $15, $16 FROM w
), f AS MATERIALIZED (
  SELECT ord, to_user, seq, epoch, '{"message":{"id":"' || id || '","seq":' || seq || ','
    || tmpl || ',"seq":' || seq || ',"type":"message.created","unread":' || unread
    || ',"unseen":' || unseen || '}' AS frame FROM w
), ev AS (
  INSERT INTO user_event (user_id, seq, payload) SELECT to_user, seq, frame::jsonb FROM f
), o AS (
  INSERT INTO outbox (user_id, seq, envelope)
  SELECT to_user, seq, 'u ' || seq || ' ' || epoch || ' '
    || (floor(extract(epoch FROM now()) * 1000000))::int8 || E'\n' || frame FROM f ORDER BY ord
), p AS (
  INSERT INTO push_pending (subscription_id, seq, user_id, message_id, created_at)
  SELECT s.id, w.seq, w.to_user, w.id, now() FROM w JOIN push_subscription s ON s.user_id = w.to_user
  WHERE NOT EXISTS (SELECT 1 FROM user_type_preference t
    WHERE t.user_id = w.to_user AND t.type = w.kind AND NOT t.push)
)
SELECT ord, seq, unread, unseen, epoch FROM w ORDER BY ord"#;

/// One entry's message, shared by all its recipients' rows.
pub struct Entry<'a> {
    pub title: &'a str,
    pub content: &'a str,
    pub kind: &'a str,
    pub send_user: Option<&'a str>,
    pub skip_url: Option<&'a str>,
    pub data: Option<&'a serde_json::Value>,
    /// The message view minus `id` and `seq` (see the module comment), as JSON text: an
    /// object with at least one field (the statement splices the row's own after its `{`).
    pub template: &'a str,
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
    /// The recipient's inbox epoch (`broker::envelope`).
    #[diesel(sql_type = BigInt)]
    pub epoch: i64,
}

/// A written row: its position in the request (1-based, `WITH ORDINALITY`) and its counters.
#[derive(QueryableByName, Debug, Clone, Copy)]
struct Written {
    #[diesel(sql_type = BigInt)]
    ord: i64,
    #[diesel(embed)]
    c: RowCounters,
}

/// The statement with its binds, as a query diesel may keep prepared. `sql_query` marks its
/// SQL unsafe to cache, so every create made PostgreSQL parse and plan this six-part statement
/// again; built this way, each pooled connection prepares it once (diesel's statement cache,
/// keyed by the SQL text and bind types) and later creates only bind and execute it.
struct Statement<'a> {
    title: Vec<&'a str>,
    content: Vec<&'a str>,
    kind: Vec<&'a str>,
    send_user: Vec<Option<&'a str>>,
    skip_url: Vec<Option<&'a str>>,
    data: Vec<Option<&'a serde_json::Value>>,
    template: Vec<&'a str>,
    rows: &'a Rows<'a>,
    users: &'a [&'a str],
    counts: &'a [i64],
    send_time: DateTime<Utc>,
    service: &'a str,
    broadcast: Option<Uuid>,
}

/// The statement's identity in diesel's statement cache. Its SQL text never changes, so a type
/// can stand for it: the cache then finds the prepared statement by this id instead of building
/// the 1.6 KB text and hashing it (with the binds' types) on every create.
pub struct StatementId;

impl QueryId for Statement<'_> {
    type QueryId = StatementId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for Statement<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // `SQL` names its parameters $1..$16 once each, in order; diesel writes each `$n` itself
        // as the binds are pushed, so the text between them is pushed as is.
        let mut parts = SQL_PARTS.iter();
        let mut next = |out: &mut AstPass<'_, 'b, Pg>| {
            out.push_sql(parts.next().copied().unwrap_or_default());
        };
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.title)?;
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.content)?;
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.kind)?;
        next(&mut out);
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.send_user)?;
        next(&mut out);
        out.push_bind_param::<Array<Nullable<Text>>, _>(&self.skip_url)?;
        next(&mut out);
        out.push_bind_param::<Array<Nullable<Jsonb>>, _>(&self.data)?;
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.template)?;
        next(&mut out);
        out.push_bind_param::<Array<Integer>, _>(&self.rows.entry)?;
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.rows.to_user)?;
        next(&mut out);
        out.push_bind_param::<Array<BigInt>, _>(&self.rows.back)?;
        next(&mut out);
        out.push_bind_param::<Array<SqlUuid>, _>(&self.rows.id)?;
        next(&mut out);
        out.push_bind_param::<Array<Text>, _>(&self.users)?;
        next(&mut out);
        out.push_bind_param::<Array<BigInt>, _>(&self.counts)?;
        next(&mut out);
        out.push_bind_param::<Timestamptz, _>(&self.send_time)?;
        next(&mut out);
        out.push_bind_param::<Text, _>(&self.service)?;
        next(&mut out);
        out.push_bind_param::<Nullable<SqlUuid>, _>(&self.broadcast)?;
        next(&mut out);
        Ok(())
    }
}

/// `SQL` cut at its parameters, once: diesel walks the statement several times per create
/// (its SQL text, its binds), and scanning the text for `$n` on every walk was a fifth of a
/// single-message POST's instructions (53k of 283k, callgrind, docs/benchmarks.md).
static SQL_PARTS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| sql_parts().collect());

/// `SQL` cut at its parameters (`$1`..`$16`): 17 pieces of text.
fn sql_parts() -> impl Iterator<Item = &'static str> {
    let mut rest = SQL;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'$' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                let piece = &rest[..i];
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                rest = &rest[j..];
                return Some(piece);
            }
            i += 1;
        }
        let piece = rest;
        rest = "";
        Some(piece)
    })
}

/// A template's text after its opening brace: its fields and the closing brace, spliced after the
/// row's own `id` and `seq` (a template is a JSON object with at least one field, as
/// `inbox::frames::message_template` makes it).
fn template_fields(template: &str) -> &str {
    debug_assert!(
        template.starts_with('{') && template.len() > 2,
        "a template is an object with fields: {template}"
    );
    template.strip_prefix('{').unwrap_or(template)
}

/// Runs the statement; `users`/`counts` are the distinct recipients, sorted, and their row
/// counts. Returns each written row's position in `rows` (0-based) and counters, in request
/// order; a row missing from the answer was not written (its recipient muted its type).
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
) -> diesel::QueryResult<Vec<(usize, RowCounters)>> {
    debug_assert!(
        users.windows(2).all(|w| w[0] < w[1]),
        "users must be sorted and distinct"
    );
    // Entries are few (at most 1,000), so collecting their columns costs nothing next to rows.
    Statement {
        title: entries.iter().map(|e| e.title).collect(),
        content: entries.iter().map(|e| e.content).collect(),
        kind: entries.iter().map(|e| e.kind).collect(),
        send_user: entries.iter().map(|e| e.send_user).collect(),
        skip_url: entries.iter().map(|e| e.skip_url).collect(),
        data: entries.iter().map(|e| e.data).collect(),
        template: entries
            .iter()
            .map(|e| template_fields(e.template))
            .collect(),
        rows,
        users,
        counts,
        send_time,
        service,
        broadcast,
    }
    .load::<Written>(conn)
    .await
    .map(|got| {
        got.into_iter()
            .map(|w| ((w.ord - 1).max(0) as usize, w.c))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statement_is_cut_into_17_pieces_at_its_16_parameters() {
        let parts: Vec<&str> = sql_parts().collect();
        assert_eq!(parts.len(), 17);
        assert!(parts.iter().all(|p| !p.contains('$')));
        assert!(parts[0].starts_with("WITH e AS"));
    }
}
