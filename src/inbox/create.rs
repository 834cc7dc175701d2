//! Creating notifications: rows, counters, event log and outbox in one transaction.

use std::collections::BTreeMap;

use diesel_async::AsyncConnection;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::frames;
use super::local::LocalDelivery;
use crate::broker::Envelope;
use crate::error::ApiError;
use crate::model::input::CreateRequest;
use crate::state::AppState;
use crate::store::create_rows::{self, RowCounters};
use crate::store::{idempotency, outbox, topic_retained, Conn, JsonText};

/// The result of a create: the `201` body (JSON text), whether it replays an earlier request, and
/// what it created (nothing for a replay).
#[derive(Debug)]
pub struct Created {
    pub body: String,
    pub replayed: bool,
    pub rows: Inserted,
}

pub struct Idempotency<'a> {
    pub key: &'a str,
}

/// Creates the request's notifications, then hands each created event to this node's sessions
/// (after the commit, never before). Without an `Idempotency-Key` the create is one statement
/// in PostgreSQL's implicit transaction (one round trip, no BEGIN/COMMIT) and the body is never
/// hashed; with one, the key's claim, the rows and the stored answer share one transaction.
pub async fn create(
    state: &AppState,
    service: &str,
    req: &CreateRequest,
    idem: Option<Idempotency<'_>>,
) -> Result<Created, ApiError> {
    let created = state
        .db(async |conn| create_messages(conn, service, req, idem).await)
        .await?;
    // Committed (the statement or transaction has returned): local sessions get it now.
    let local = LocalDelivery::of(state);
    local.user_events(created.rows.envelopes(req, |u| local.here(u)));
    Ok(created)
}

/// `create` without the local delivery: the database half (also used by tests).
pub async fn create_messages(
    conn: &mut Conn,
    service: &str,
    req: &CreateRequest,
    idem: Option<Idempotency<'_>>,
) -> Result<Created, ApiError> {
    let Some(idem) = idem else {
        let rows = insert_rows(conn, service, req, None).await?;
        return Ok(Created {
            body: rows.body(req),
            replayed: false,
            rows,
        });
    };
    let hash = hex::encode(Sha256::digest(req.canonical().as_bytes()));
    conn.transaction::<_, ApiError, _>(async |conn| {
        if let Some(body) = replayed(conn, service, Some(&idem), &hash).await? {
            return Ok(Created {
                body: body.to_string(),
                replayed: true,
                rows: Inserted::default(),
            });
        }
        let rows = insert_rows(conn, service, req, None).await?;
        let body = rows.body(req);
        remember(conn, service, Some(&idem), &body).await?;
        Ok(Created {
            body,
            replayed: false,
            rows,
        })
    })
    .await
}

/// The first half of an `Idempotency-Key`, inside the caller's transaction: claims the key, or
/// answers with the first request's body (`Some`), or refuses a reuse with another body (409).
/// `request_hash` identifies the request (route and canonical body).
pub async fn replayed(
    conn: &mut Conn,
    service: &str,
    idem: Option<&Idempotency<'_>>,
    request_hash: &str,
) -> Result<Option<Value>, ApiError> {
    let Some(idem) = idem else {
        return Ok(None);
    };
    match idempotency::begin(conn, service, idem.key, request_hash).await? {
        idempotency::Begin::Fresh => Ok(None),
        idempotency::Begin::Replay(body) => Ok(Some(body)),
        idempotency::Begin::Mismatch => Err(ApiError::Conflict(
            "this Idempotency-Key was used with a different request body".into(),
        )),
    }
}

/// The second half: stores the answer (JSON text) for later replays, in the same transaction.
pub async fn remember(
    conn: &mut Conn,
    service: &str,
    idem: Option<&Idempotency<'_>>,
    body: &str,
) -> Result<(), ApiError> {
    if let Some(idem) = idem {
        idempotency::finish(conn, service, idem.key, JsonText(body)).await?;
    }
    Ok(())
}

/// What `insert_rows` created: per row, in request order, where it came from in the request,
/// its id and its counters; per entry, the message template its frames are built from; and the
/// rows it did not create because their recipient muted their type (contract §10).
#[derive(Debug, Default)]
pub struct Inserted {
    rows: Vec<InsertedRow>,
    /// (entry, recipient) of each row not created, in request order.
    skipped: Vec<(u32, u32)>,
    /// The rows' `send_time` (their frames carry it).
    send_time: frames::SendTime,
    /// The same instant, as an envelope's `at` (microseconds since 1970).
    at: i64,
}

#[derive(Debug, Clone, Copy)]
struct InsertedRow {
    entry: u32,
    recipient: u32,
    id: Uuid,
    c: RowCounters,
}

impl Inserted {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Rows not created because their recipient muted their type.
    pub fn skipped(&self) -> usize {
        self.skipped.len()
    }

    /// The `201` body: `{"messages": [{id, to_user, seq}, ...], "skipped": [{reason, to_user},
    /// ...]}` in request order, as JSON text serialised straight from the rows (fields sorted,
    /// as a `serde_json::Value` held them); building a `Value` per row first cost more than the
    /// rest of a batch's answer. `skipped` is always there, empty when every row was created.
    pub fn body(&self, req: &CreateRequest) -> String {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            id: Uuid,
            seq: i64,
            to_user: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Skipped<'a> {
            reason: &'static str,
            to_user: &'a str,
        }
        #[derive(serde::Serialize)]
        struct Body<'a> {
            messages: Vec<Row<'a>>,
            skipped: Vec<Skipped<'a>>,
        }
        let messages = self
            .rows
            .iter()
            .map(|r| Row {
                id: r.id,
                seq: r.c.seq,
                to_user: recipient_at(req, r.entry, r.recipient),
            })
            .collect();
        let skipped = self
            .skipped
            .iter()
            .map(|&(entry, k)| Skipped {
                reason: MUTED,
                to_user: recipient_at(req, entry, k),
            })
            .collect();
        serde_json::to_string(&Body { messages, skipped }).unwrap_or_default()
    }

    /// Each row's recipient and `message.created` envelope, its frame as text: the frame stored
    /// in `user_event` (serialised here from the request entry; the relay publishes the same JSON
    /// as the create statement wrote it, with the message's fields in another order, and actors
    /// drop the second copy by seq), built only for the rows `wanted` says yes to.
    pub fn envelopes<'a>(
        &'a self,
        req: &'a CreateRequest,
        mut wanted: impl FnMut(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (&'a str, Envelope)> + 'a {
        self.rows.iter().filter_map(move |r| {
            let user = recipient(req, r);
            if !wanted(user) {
                return None;
            }
            let entry = req.entries.get(r.entry as usize)?;
            let frame = frames::created_text(entry, &self.send_time, r.id, r.c);
            Some((user, Envelope::user(r.c.seq, r.c.epoch, self.at, frame)))
        })
    }
}

/// The `reason` of a row skipped because its recipient set `in_app: false` for its type.
pub const MUTED: &str = "muted";

fn recipient<'a>(req: &'a CreateRequest, r: &InsertedRow) -> &'a str {
    recipient_at(req, r.entry, r.recipient)
}

fn recipient_at(req: &CreateRequest, entry: u32, k: u32) -> &str {
    req.entries
        .get(entry as usize)
        .and_then(|e| e.recipients.get(k as usize))
        .map_or("", String::as_str)
}

/// THE insert path of notifications: message rows, counters, event-log rows and outbox entries
/// in one statement (`store::create_rows`), which also leaves out the rows whose recipient muted
/// their type (`Inserted::skipped`), on the caller's connection: alone it commits by
/// itself, inside the caller's transaction (`create_messages` with an `Idempotency-Key`, one
/// announcement batch for `announce::batch`, whose rows carry `broadcast`) it commits with it.
pub async fn insert_rows(
    conn: &mut Conn,
    service: &str,
    req: &CreateRequest,
    broadcast: Option<Uuid>,
) -> Result<Inserted, ApiError> {
    let now = super::db_now();
    // Rows per user, to number each user's rows in request order.
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for e in &req.entries {
        for u in &e.recipients {
            *per_user.entry(u).or_default() += 1;
        }
    }
    let n = req.rows();
    let mut rows = create_rows::Rows {
        entry: Vec::with_capacity(n),
        to_user: Vec::with_capacity(n),
        back: Vec::with_capacity(n),
        id: Vec::with_capacity(n),
    };
    let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
    let mut origin = Vec::with_capacity(n);
    for (i, e) in req.entries.iter().enumerate() {
        for (k, u) in e.recipients.iter().enumerate() {
            let total = per_user.get(u.as_str()).copied().unwrap_or(1);
            let before = seen.entry(u).or_default();
            *before += 1;
            rows.entry.push(i as i32 + 1);
            rows.to_user.push(u);
            rows.back.push(total - *before);
            rows.id.push(Uuid::now_v7());
            origin.push((i as u32, k as u32));
        }
    }
    let send_time = frames::SendTime::of(now);
    let templates: Vec<String> = req
        .entries
        .iter()
        .map(|e| frames::message_template(e, &send_time))
        .collect();
    let entries: Vec<create_rows::Entry> = req
        .entries
        .iter()
        .zip(&templates)
        .map(|(e, t)| create_rows::Entry {
            title: &e.title,
            content: &e.content,
            kind: &e.kind,
            send_user: e.send_user.as_deref(),
            skip_url: e.skip_url.as_deref(),
            data: e.data.as_ref(),
            template: t,
        })
        .collect();
    let users: Vec<&str> = per_user.keys().copied().collect();
    let counts: Vec<i64> = per_user.values().copied().collect();
    let got = create_rows::insert(
        conn, &entries, &rows, &users, &counts, now, service, broadcast,
    )
    .await?;
    // Written rows come back in request order with their position; the others were muted.
    if got.len() > n
        || got.windows(2).any(|w| w[0].0 >= w[1].0)
        || got.last().is_some_and(|w| w.0 >= n)
    {
        return Err(anyhow::anyhow!(
            "create returned {} rows out of order or range for {n}",
            got.len()
        )
        .into());
    }
    let mut written = got.into_iter().peekable();
    let mut inserted = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    for (i, ((entry, recipient), id)) in origin.into_iter().zip(rows.id).enumerate() {
        match written.next_if(|w| w.0 == i) {
            Some((_, c)) => inserted.push(InsertedRow {
                entry,
                recipient,
                id,
                c,
            }),
            None => skipped.push((entry, recipient)),
        }
    }
    Ok(Inserted {
        rows: inserted,
        skipped,
        send_time,
        at: now.timestamp_micros(),
    })
}

/// A topic event to create: from `POST /api/v1/topics/{topic}/events` (a service) or a
/// client's `publish` frame (`from` = the sender's `sub`, taken from its token).
pub struct TopicEvent<'a> {
    pub topic: &'a str,
    pub data: &'a Value,
    pub from: Option<&'a str>,
    /// Also make it the topic's retained value until this instant.
    pub retain_until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Every topic event, whoever publishes it: a fresh id (UUIDv7), the frame in the outbox and,
/// when retained, the topic's retained value, in one transaction. Returns the event id.
pub async fn topic_event(conn: &mut Conn, ev: &TopicEvent<'_>) -> Result<String, ApiError> {
    let id = Uuid::now_v7().to_string();
    let frame = frames::topic_event(ev.topic, &id, ev.data, ev.from);
    // Retained or not is said in the envelope's header, so every node's router updates its
    // cache without reading the frame.
    let envelope = Envelope::topic(&id, ev.retain_until.is_some(), frame.to_string());
    conn.transaction::<_, ApiError, _>(async |conn| {
        outbox::enqueue_topic_event(conn, ev.topic, &envelope).await?;
        if let Some(until) = ev.retain_until {
            topic_retained::upsert(conn, ev.topic, &id, &frame, until).await?;
        }
        Ok(())
    })
    .await?;
    Ok(id)
}

/// A retained topic event published only if the topic has no unexpired retained value (the
/// dev product page's starting values): the retained row is written first, conditionally, and
/// the outbox entry only if it was, in one transaction. So a value a service published meanwhile
/// is never replaced, and concurrent callers publish once. Returns the event id if published.
pub async fn topic_event_if_unretained(
    conn: &mut Conn,
    topic: &str,
    data: &Value,
    retain_until: chrono::DateTime<chrono::Utc>,
) -> Result<Option<String>, ApiError> {
    let id = Uuid::now_v7().to_string();
    let frame = frames::topic_event(topic, &id, data, None);
    let envelope = Envelope::topic(&id, true, frame.to_string());
    let written = conn
        .transaction::<_, ApiError, _>(async |conn| {
            if !topic_retained::insert_if_unretained(conn, topic, &id, &frame, retain_until).await?
            {
                return Ok(false);
            }
            outbox::enqueue_topic_event(conn, topic, &envelope).await?;
            Ok(true)
        })
        .await?;
    Ok(written.then_some(id))
}
