//! `GET /ws`: admit (the node's handshakes in flight), authenticate, check the origin and the
//! user's (or anonymous client address's) socket limit, upgrade, and hand
//! the session to the user's actor (an anonymous viewer of public topics has none: it gets its
//! `hello` here).
//!
//! Admission (`gateway::admission`) comes after the checks that need no database (origin, token,
//! `since`, socket limits): a node works on `NOTIFYD_WS_MAX_JOINING` handshakes at once and
//! queues a bounded number more. One it cannot take or queue is upgraded and closed at once
//! with 1013 and a jittered `retry_after` (what our clients already honour for a busy node),
//! before any database work. A plain HTTP 503 would be cheaper still, but a browser's WebSocket
//! sees neither its status nor its `Retry-After`: only a close code and reason reach it.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::admission::Refused;
use super::conn::Conn;
use super::opening::{
    check_origin, non_negative, refuse_shutting_down, socket_permit, still_there,
};
use super::session::{self, SessionCtx};
use super::ws_body;
use super::ws_messages::ClientMessages;
use crate::auth::user::authenticate_ws;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::outbound::{CloseWith, SessionTx, Transport};
use crate::wire::protocol::{self, close};
use actix_web::body::{BodyStream, MessageBody};
use tokio::sync::oneshot;
use tracing::Instrument;

#[derive(Deserialize)]
struct WsQuery {
    since: Option<String>,
    /// The inbox epoch of the client's `hello` (`broker::envelope`): with `since`, a resume
    /// into another inbox (the user was erased meanwhile) gets a reset.
    epoch: Option<String>,
}

#[get("/ws")]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // What needs no database and no turn comes first, so a handshake that would be refused
    // anyway (bad origin, bad token, bad `since`, over its user's or address's socket limit)
    // never takes a place in the queue.
    check_origin(&req, &state)?;
    let claims = authenticate_ws(&req, !state.settings.public_topics.is_empty())?;
    let q = web::Query::<WsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let since = non_negative(q.since.as_deref(), "since")?;
    let epoch = non_negative(q.epoch.as_deref(), "epoch")?;
    // Checked before a socket count is taken; admission answers the same once it is closed.
    if state.gateway.is_shutting_down() {
        return Err(refuse_shutting_down());
    }
    let permit = socket_permit(&req, &state, claims.as_ref())?;
    let conn = Conn::of(&req);
    let joining = match state.gateway.admission.admit().await {
        Ok(turn) => turn,
        Err(Refused::Closing) => return Err(refuse_shutting_down()),
        Err(busy) => return refuse_busy(&req, body, &state, busy.reason()),
    };
    still_there(conn.as_ref())?;
    let me = SessionTx::new(state.gateway.next_id(), Transport::Ws);
    let (response, body_gone) = upgrade(&req, &me)?;
    let stream = ClientMessages::new(body);
    let shared = state.clone().into_inner();
    // One span per session (issue 11 item 5): every log line of its task carries the user, the
    // session id and the node. Not a child of the handshake's request span, which ends with
    // the upgrade.
    let span = tracing::info_span!(
        parent: None,
        "ws_session",
        user = claims.as_ref().map(|c| c.user.as_str()).unwrap_or("anonymous"),
        session = me.id,
        node = %state.settings.node_id,
    );
    span.in_scope(|| tracing::info!(resume_after = ?since, "websocket session opened"));
    let (actor, joined) = match &claims {
        Some(c) => match state
            .gateway
            .join(&shared, &c.user, me.clone(), since, epoch, joining)
        {
            Ok((actor, joined)) => (Some(actor), joined),
            Err(e) => {
                span.in_scope(|| tracing::debug!(error = %e, "session refused after the upgrade"));
                // Closed with 1013 and a jittered `retry_after`: the body writes that frame.
                let busy = (close::TRY_AGAIN_LATER, protocol::busy_reason());
                me.close_with(busy.0, busy.1);
                me.end();
                actix_web::rt::spawn(close_busy(stream, Some(busy), &state, conn).instrument(span));
                return Ok(response);
            }
        },
        None => {
            let heartbeat_s = state.settings.heartbeat.as_secs().max(1);
            me.push_json(&protocol::hello_anonymous(heartbeat_s));
            super::inbound::anonymous_gauge(&me, 1.0);
            let (hello_sent, joined) = oneshot::channel();
            let _ = hello_sent.send(());
            drop(joining); // hello is out: the handshake's work is done
            (None, joined)
        }
    };
    if claims.is_none() {
        state.topics.open_anonymous(&me);
    }
    let session = session::run(Box::new(SessionCtx {
        stream,
        body_gone,
        me,
        actor,
        joined,
        heartbeat: state.settings.heartbeat,
        state: shared,
        claims,
        permit,
        conn,
    }));
    actix_web::rt::spawn(session.instrument(span));
    Ok(response)
}

/// The handshake's answer (`101`, from actix-http's `ws::handshake`) with the session's queue
/// as its body (`ws_body`), and what resolves once that body is dropped.
fn upgrade(
    req: &HttpRequest,
    me: &SessionTx,
) -> Result<(HttpResponse, oneshot::Receiver<()>), ApiError> {
    let handshake =
        |e: &dyn std::fmt::Display| ApiError::BadRequest(format!("websocket handshake: {e}"));
    let mut response = actix_http::ws::handshake(req.head()).map_err(|e| handshake(&e))?;
    let (alive, gone) = oneshot::channel();
    let body = BodyStream::new(ws_body::Body::new(me.clone(), alive).into_stream());
    let response = response
        .message_body(body.boxed())
        .map_err(|e| handshake(&e))?;
    Ok((HttpResponse::from(response), gone))
}

/// Upgrades and at once closes with 1013 and a jittered `retry_after`: the node has
/// `NOTIFYD_WS_MAX_JOINING` handshakes in flight and no place in its queue (or the wait for one
/// passed `NOTIFYD_WS_JOIN_WAIT`). Nothing more the client sent is read: it meets TCP
/// back-pressure until the connection is reset (`close_busy`).
fn refuse_busy(
    req: &HttpRequest,
    body: web::Payload,
    state: &AppState,
    reason: &'static str,
) -> Result<HttpResponse, ApiError> {
    metrics::counter!("notifyd_ws_refused_total", "reason" => reason).increment(1);
    // A queue of its own holding only the close: its body writes the close frame and ends.
    let me = SessionTx::new(state.gateway.next_id(), Transport::Ws);
    let busy = (close::TRY_AGAIN_LATER, protocol::busy_reason());
    me.close_with(busy.0, busy.1);
    let (response, _gone) = upgrade(req, &me)?;
    me.end();
    actix_web::rt::spawn(close_busy(body, Some(busy), state, Conn::of(req)));
    Ok(response)
}

/// Ends a session refused right after its upgrade, whose body writes its close (1013 and a
/// jittered `retry_after`), holding the client's stream unread until the connection is gone
/// (`session::close_holding`).
fn close_busy<S>(
    held: S,
    busy: Option<CloseWith>,
    state: &AppState,
    conn: Option<Conn>,
) -> impl std::future::Future<Output = ()> {
    let grace = super::lifetime::close_grace(state.settings.heartbeat);
    session::close_holding(held, busy, grace, conn)
}
