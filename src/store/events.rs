//! `user_event`: the retained per-user change stream. The payload is the exact WebSocket frame.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::prelude::*;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Jsonb, Untyped};
use diesel_async::RunQueryDsl;
use serde_json::value::RawValue;

use super::schema::user_event as e;
use super::Conn;

const INSERT_CHUNK: usize = 5000;

/// An event as the log gives it back: its frame's JSON text, passed on as it is. Every read
/// of the log ends in a frame (a `sync`, a repaired or caught-up event, `/me/changes`), so an
/// event is never parsed into a `serde_json::Value` only to be serialised again: in a reconnect
/// storm those two steps were ~14% of the survivor's CPU (docs/decisions/0020).
///
/// The text is PostgreSQL's rendering of the `jsonb` value (its key order) without the blanks
/// it puts after `:` and `,`, so a replayed frame is as compact as a live one.
#[derive(Debug, Clone, FromSqlRow)]
#[diesel(sql_type = Jsonb)]
pub struct StoredFrame(Box<RawValue>);

impl StoredFrame {
    /// The frame's JSON text.
    pub fn text(&self) -> &str {
        self.0.get()
    }

    /// A frame built in memory (the lib's unit tests; the service only reads frames from the log).
    #[cfg(test)]
    pub fn from_json(v: &serde_json::Value) -> StoredFrame {
        // A `Value` always serialises to valid JSON (the default, `null`, is never taken).
        StoredFrame(RawValue::from_string(v.to_string()).unwrap_or_default())
    }
}

impl serde::Serialize for StoredFrame {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl FromSql<Jsonb, Pg> for StoredFrame {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        // `jsonb`'s binary form: a version byte (1), then the value as JSON text.
        let (version, text) = value.as_bytes().split_first().ok_or("empty jsonb value")?;
        if *version != 1 {
            return Err(format!("jsonb format version {version}, expected 1").into());
        }
        let text = std::str::from_utf8(text)?;
        Ok(StoredFrame(RawValue::from_string(compact(text))?))
    }
}

/// `text` (valid JSON) without the blanks between its tokens. Strings are copied as they are,
/// escapes included.
///
/// Most of an event's bytes are inside strings, which are skipped to their closing quote with
/// `memchr` (vectorised); only the few bytes between strings are looked at one by one. Every
/// byte JSON's syntax looks at (quotes, backslashes, blanks) is ASCII, and no byte of a
/// multi-byte UTF-8 character is, so the text stays UTF-8. (Decoding and re-encoding each
/// `char` cost ~13,500 instructions per event of a storm's catch-up, ~12% of the survivor's
/// instructions in a storm; docs/decisions/0020.)
fn compact(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    // `i`: the next byte to look at; `run`: the first byte not yet copied.
    let (mut i, mut run) = (0, 0);
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                // To the closing quote, past escaped characters.
                while let Some(k) = memchr::memchr2(b'"', b'\\', &b[i..]) {
                    if b[i + k] == b'"' {
                        i += k;
                        break;
                    }
                    i = (i + k + 2).min(b.len());
                }
                i += 1;
            }
            b' ' | b'\n' | b'\r' | b'\t' => {
                out.extend_from_slice(&b[run..i]);
                i += 1;
                run = i;
            }
            _ => i += 1,
        }
    }
    out.extend_from_slice(&b[run..]);
    // Only ASCII bytes were left out, so this never fails; were it to, the text stays as it was.
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

#[derive(Insertable, Debug, Clone)]
#[diesel(table_name = e)]
pub struct NewEvent {
    pub user_id: String,
    pub seq: i64,
    pub payload: serde_json::Value,
}

pub async fn append(conn: &mut Conn, rows: &[NewEvent]) -> QueryResult<()> {
    for chunk in rows.chunks(INSERT_CHUNK) {
        diesel::insert_into(e::table)
            .values(chunk)
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The user's events with `since < seq <= until`, oldest first, at most `limit`.
pub async fn range(
    conn: &mut Conn,
    user: &str,
    since: i64,
    until: Option<i64>,
    limit: i64,
) -> QueryResult<Vec<(i64, StoredFrame)>> {
    let mut q = e::table
        .filter(e::user_id.eq(user))
        .filter(e::seq.gt(since))
        .select((e::seq, e::payload))
        .order(e::seq.asc())
        .limit(limit)
        .into_boxed();
    if let Some(u) = until {
        q = q.filter(e::seq.le(u));
    }
    q.load(conn).await
}

/// `range`, only while the user's inbox is still `epoch` (checked in the same statement, so in
/// the same snapshot): an inbox replaced meanwhile (erased and begun again) gives no rows
/// rather than the new inbox's events at the old inbox's seqs. `epoch` 0 (not known) is not
/// checked.
pub async fn range_in(
    conn: &mut Conn,
    user: &str,
    epoch: i64,
    since: i64,
    until: i64,
    limit: i64,
) -> QueryResult<Vec<(i64, StoredFrame)>> {
    use super::schema::user_inbox_state as s;
    if epoch == 0 {
        return range(conn, user, since, Some(until), limit).await;
    }
    e::table
        .filter(e::user_id.eq(user))
        .filter(e::seq.gt(since))
        .filter(e::seq.le(until))
        .filter(diesel::dsl::exists(
            s::table
                .filter(s::user_id.eq(user))
                .filter(s::epoch.eq(epoch)),
        ))
        .select((e::seq, e::payload))
        .order(e::seq.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Every event of `user` (erasure). A plain `WHERE user_id` so it also works when the table is
/// partitioned (every partition is searched by its own primary key).
pub async fn erase_user(conn: &mut Conn, user: &str) -> QueryResult<usize> {
    diesel::delete(e::table.filter(e::user_id.eq(user)))
        .execute(conn)
        .await
}

/// One row of `resume_many`: a request's counters, and one of its missed events (none when the
/// request wants counters only, is caught up, or is too far behind for a replay).
#[derive(diesel::QueryableByName, Debug)]
pub struct ResumeRow {
    /// Index of the request in the arrays given to `resume_many`.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub i: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub seq: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub unread: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub unseen: i64,
    /// The inbox epoch (0: no inbox).
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub epoch: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    pub event_seq: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Jsonb>)]
    pub payload: Option<StoredFrame>,
}

/// Many users' counters and missed events in ONE statement (so one snapshot, one round trip):
/// request `i` is `(users[i], since[i])`; a `since` below 0 asks for counters only. Events are
/// read only where a replay is possible (`0 <= since`, `seq - since <= max_replay`), at most
/// `max_replay` per request, `since < seq <= counters' seq`, ordered by request then seq. Every
/// request gets at least one row. A user may appear in more than one request.
pub async fn resume_many(
    conn: &mut Conn,
    users: &[String],
    since: &[i64],
    max_replay: i64,
) -> QueryResult<Vec<ResumeRow>> {
    ResumeMany {
        users,
        since,
        max_replay,
    }
    .load(conn)
    .await
}

/// `resume_many`'s statement, cut where its binds go (diesel numbers them as they are pushed):
/// the users, their `since`, and the replay bound twice.
const RESUME_MANY_SQL: [&str; 5] = [
    "WITH r AS (SELECT * FROM unnest(",
    "::text[], ",
    "::int8[]) WITH ORDINALITY AS r(user_id, since, i)), \
     c AS (SELECT r.i, r.user_id, r.since, coalesce(s.seq, 0) AS seq, \
                  coalesce(s.unread, 0) AS unread, coalesce(s.unseen, 0) AS unseen, \
                  coalesce(s.epoch, 0) AS epoch \
           FROM r LEFT JOIN user_inbox_state s ON s.user_id = r.user_id) \
     SELECT c.i - 1 AS i, c.seq, c.unread, c.unseen, c.epoch, ev.seq AS event_seq, ev.payload \
     FROM c LEFT JOIN LATERAL ( \
         SELECT e.seq, e.payload FROM user_event e \
         WHERE c.since >= 0 AND c.seq - c.since <= ",
    " AND e.user_id = c.user_id AND e.seq > c.since AND e.seq <= c.seq \
         ORDER BY e.seq LIMIT ",
    ") ev ON true \
     ORDER BY c.i, ev.seq",
];

/// `resume_many` as a query diesel keeps prepared on the connection (its statement cache, by
/// this type's id). `sql_query` marks its text unsafe to cache, so PostgreSQL parsed, analysed
/// and planned this statement for every batch: in a 15,000-client storm that was ~1,500–2,300
/// statements of a few users each, and parsing and planning were most of the catch-up
/// connections' CPU (issue 22 item 8). Through a transaction pooler the cache is off
/// (`db::Connector`), and it is prepared each time as before.
struct ResumeMany<'a> {
    users: &'a [String],
    since: &'a [i64],
    max_replay: i64,
}

/// The statement's identity in diesel's statement cache.
struct ResumeManyId;

impl QueryId for ResumeMany<'_> {
    type QueryId = ResumeManyId;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl Query for ResumeMany<'_> {
    type SqlType = Untyped;
}

impl QueryFragment<Pg> for ResumeMany<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        use diesel::sql_types::{Array, BigInt, Text};
        let [head, after_users, after_since, after_bound, tail] = RESUME_MANY_SQL;
        out.push_sql(head);
        out.push_bind_param::<Array<Text>, _>(self.users)?;
        out.push_sql(after_users);
        out.push_bind_param::<Array<BigInt>, _>(self.since)?;
        out.push_sql(after_since);
        out.push_bind_param::<BigInt, _>(&self.max_replay)?;
        out.push_sql(after_bound);
        out.push_bind_param::<BigInt, _>(&self.max_replay)?;
        out.push_sql(tail);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::compact;

    /// PostgreSQL renders `jsonb` with a blank after every `:` and `,`; a frame carries none,
    /// while blanks, commas, colons, quotes and escapes inside strings stay as they are.
    #[test]
    fn compact_drops_the_blanks_between_tokens_only() {
        let pg = r#"{"a": 1, "b": "x, y: \"z\" \\", "c": [1, 2, {"d": null}], "e": "\u00e9 "}"#;
        assert_eq!(
            compact(pg),
            r#"{"a":1,"b":"x, y: \"z\" \\","c":[1,2,{"d":null}],"e":"\u00e9 "}"#
        );
        let v: serde_json::Value = serde_json::from_str(pg).expect("valid JSON");
        let again: serde_json::Value = serde_json::from_str(&compact(pg)).expect("still JSON");
        assert_eq!(again, v, "the same value");
    }

    #[test]
    fn compact_gives_serde_jsons_own_compact_text() {
        let v = serde_json::json!({
            "id": "e1", "n": [1, -2.5, true, null], "quote \" and \\": "a \"b\" \\ c\\",
            "nested": {"k": ["x y", {"z": "\u{1F389} \n\t"}]}, "empty": "", "tail\\": " "
        });
        let pretty = serde_json::to_string_pretty(&v).expect("pretty");
        assert_eq!(
            compact(&pretty),
            serde_json::to_string(&v).expect("compact")
        );
        // Cut short (not JSON): no panic, whatever comes back.
        for cut in 0..pretty.len() {
            if pretty.is_char_boundary(cut) {
                let _ = compact(&pretty[..cut]);
            }
        }
    }

    #[test]
    fn compact_keeps_multi_byte_characters_whole() {
        // Written as PostgreSQL's jsonb output writes them: as the characters, not escaped.
        let pg = "{\"é\": \"漢字 🎉\", \"t\": [\"a\\tb\", \"ü ü\"]}";
        assert_eq!(compact(pg), "{\"é\":\"漢字 🎉\",\"t\":[\"a\\tb\",\"ü ü\"]}");
        let v: serde_json::Value = serde_json::from_str(pg).expect("valid JSON");
        let again: serde_json::Value = serde_json::from_str(&compact(pg)).expect("still JSON");
        assert_eq!(again, v, "the same value");
    }
}
