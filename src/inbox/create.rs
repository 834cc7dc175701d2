//! Creating notifications: rows, counters, event log and outbox in one transaction.

use std::collections::BTreeMap;

use diesel_async::AsyncConnection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::frames;
use super::input::CreateRequest;
use crate::error::ApiError;
use crate::store::events::NewEvent;
use crate::store::messages::NewMessage;
use crate::store::{events, idempotency, inbox_state, messages, outbox, topic_retained, Conn};

/// The result of a create: the `201` body, and whether it replays an earlier request.
#[derive(Debug)]
pub struct Created {
    pub body: Value,
    pub replayed: bool,
}

pub struct Idempotency<'a> {
    pub key: &'a str,
}

pub async fn create_messages(
    conn: &mut Conn,
    service: &str,
    req: &CreateRequest,
    idem: Option<Idempotency<'_>>,
) -> Result<Created, ApiError> {
    let hash = hex::encode(Sha256::digest(req.canonical.as_bytes()));
    conn.transaction::<_, ApiError, _>(async |conn| {
        if let Some(body) = replayed(conn, service, idem.as_ref(), &hash).await? {
            return Ok(Created {
                body,
                replayed: true,
            });
        }
        let body = insert_rows(conn, service, req, None).await?;
        remember(conn, service, idem.as_ref(), &body).await?;
        Ok(Created {
            body,
            replayed: false,
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

/// The second half: stores the answer for later replays, in the same transaction.
pub async fn remember(
    conn: &mut Conn,
    service: &str,
    idem: Option<&Idempotency<'_>>,
    body: &Value,
) -> Result<(), ApiError> {
    if let Some(idem) = idem {
        idempotency::finish(conn, service, idem.key, body).await?;
    }
    Ok(())
}

/// THE insert path of notifications: message rows, counters, event-log rows and outbox entries,
/// in the caller's transaction (`create_messages` for a request, one announcement batch for
/// `announce::batch`, whose rows carry `broadcast`). Returns the `201` body.
pub async fn insert_rows(
    conn: &mut Conn,
    service: &str,
    req: &CreateRequest,
    broadcast: Option<Uuid>,
) -> Result<Value, ApiError> {
    // Rows in request order: (entry index, recipient).
    let rows: Vec<(usize, &str)> = req
        .entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| e.recipients.iter().map(move |u| (i, u.as_str())))
        .collect();
    let mut per_user: BTreeMap<&str, i64> = BTreeMap::new();
    for (_, u) in &rows {
        *per_user.entry(u).or_default() += 1;
    }
    // Sorted (BTreeMap) so every transaction locks counter rows in the same order.
    let counts: Vec<(String, i64)> = per_user.iter().map(|(u, n)| (u.to_string(), *n)).collect();
    let after = inbox_state::add_created(conn, &counts).await?;

    // Each user's rows take the seqs (old, new], in request order.
    let mut next: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
    for ((user, n), (_, c)) in per_user.iter().zip(after.iter()) {
        next.insert(user, (c.seq - n, c.unread - n, c.unseen - n));
    }
    let now = super::db_now();
    let mut new_messages = Vec::with_capacity(rows.len());
    let mut new_events = Vec::with_capacity(rows.len());
    let mut answer = Vec::with_capacity(rows.len());
    for (i, user) in &rows {
        let e = &req.entries[*i];
        let slot = next
            .get_mut(user)
            .ok_or_else(|| anyhow::anyhow!("counter row missing for a recipient"))?;
        slot.0 += 1;
        slot.1 += 1;
        slot.2 += 1;
        let msg = NewMessage {
            id: Uuid::now_v7(),
            to_user: user.to_string(),
            seq: slot.0,
            title: e.title.clone(),
            content: e.content.clone(),
            kind: e.kind.clone(),
            send_user: e.send_user.clone(),
            send_time: now,
            skip_url: e.skip_url.clone(),
            data: e.data.clone(),
            service: service.to_string(),
            broadcast_id: broadcast,
        };
        new_events.push(NewEvent {
            user_id: msg.to_user.clone(),
            seq: msg.seq,
            payload: frames::created(slot.0, slot.1, slot.2, &msg.view()),
        });
        answer.push(json!({"id": msg.id, "to_user": msg.to_user, "seq": msg.seq}));
        new_messages.push(msg);
    }
    messages::insert(conn, &new_messages).await?;
    events::append(conn, &new_events).await?;
    let entries: Vec<(&str, i64)> = new_events
        .iter()
        .map(|e| (e.user_id.as_str(), e.seq))
        .collect();
    outbox::enqueue_user_events(conn, &entries).await?;
    Ok(json!({ "messages": answer }))
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
    conn.transaction::<_, ApiError, _>(async |conn| {
        match ev.retain_until {
            None => {
                outbox::enqueue_topic_event(conn, ev.topic, &frame).await?;
            }
            Some(until) => {
                // The published payload says it is retained, so every node's router updates
                // its cache; routers strip the marker before the frame reaches clients.
                let mut payload = frame.clone();
                if let Some(obj) = payload.as_object_mut() {
                    obj.insert(RETAIN_MARKER.into(), Value::Bool(true));
                }
                outbox::enqueue_topic_event(conn, ev.topic, &payload).await?;
                topic_retained::upsert(conn, ev.topic, &id, &frame, until).await?;
            }
        }
        Ok(())
    })
    .await?;
    Ok(id)
}

/// The field of a published topic payload that marks a retained event (never sent to clients).
pub const RETAIN_MARKER: &str = "retain";
