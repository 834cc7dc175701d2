//! `GET /sse` (contract §10): the bell where a WebSocket cannot go (proxies that strip
//! `Upgrade`). A second transport over the same session core as `/ws`: the same socket limits,
//! admission, join through the user's actor (`hello`, `sync`, live events, gap repair), topic
//! router, liveness and token expiry (`lifetime`), and departure (`Inbound::depart`). What is
//! its own: how it authenticates (a ticket, since `EventSource` cannot set headers, or a bearer
//! header), that its topics come with the request (`?topics=`), and how frames are written
//! (`wire::sse`). Commands go over the REST API.
//!
//! Two halves share the session's outbound queue (`SessionTx`):
//! - the response body (`Body`) drains it into SSE events whenever actix-http asks for more,
//!   and notes when it last found the queue empty: everything written until then was taken;
//! - the session's task (`run`) keeps its lifetime: the heartbeat (a `: ping` comment), the
//!   token's expiry, a client that stopped taking what it is sent (the body's last drain is
//!   older than the liveness window: there are no pongs on this transport), a client that has
//!   gone. It must be a task of its own: a body actix-http stops polling (its write buffer is
//!   full) could not notice that itself.
//!
//! A client that dies without closing (no FIN, no RST) stops acknowledging the heartbeats; the
//! kernel then gives up on the connection after `TCP_USER_TIMEOUT`, set to the liveness window
//! on every SSE connection, and the body is dropped with it.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder, ResponseError};
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::admission::Refused;
use super::conn::Conn;
use super::inbound::{anonymous_gauge, may_subscribe, Inbound};
use super::lifetime::{close_grace, liveness_window, Lifetime, Tick};
use super::mailbox::MailboxSender;
use super::opening::{
    check_origin, non_negative, refuse_shutting_down, socket_permit, still_there,
};
use super::sockets::SocketPermit;
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::state::AppState;
use crate::topics::router::{Holder, Pending};
use crate::wire::outbound::{Drained, Out, SessionTx, Transport};
use crate::wire::protocol::{self, close, MAX_TOPICS_PER_FRAME};
use crate::wire::sse;

/// The kernel's send buffer of an SSE connection.
const SEND_BUFFER: usize = 64 * 1024;
/// How often an idle stream looks whether its client has gone. actix-http keeps writing a
/// response whose client closed its side (HTTP allows a half-close), and an idle stream writes
/// only a heartbeat: without a look of its own, a browser that closed the tab or reconnected
/// would keep its old session (its socket count, its presence) for up to a heartbeat.
const PEER_CHECK: Duration = Duration::from_secs(2);
/// How long a stream closed for what its client did (its token expired, it stopped reading)
/// has to take its last event before the connection is reset.
const SHORT_GRACE: Duration = Duration::from_secs(2);

#[derive(Deserialize)]
struct SseQuery {
    ticket: Option<String>,
    /// A user JWT: refused here (a URL ends up in logs), named only to say so.
    token: Option<String>,
    access_token: Option<String>,
    since: Option<String>,
    /// The inbox epoch of the client's last `hello` (see `/ws`).
    epoch: Option<String>,
    /// `a,b`: subscribed before `hello`.
    topics: Option<String>,
}

/// The query parameters `SseQuery` reads.
const KNOWN_PARAMS: [&str; 6] = [
    "ticket",
    "token",
    "access_token",
    "since",
    "epoch",
    "topics",
];

/// `GET /sse` (and `HEAD /sse`: the same checks, the stream's headers, no session).
pub async fn connect(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // Everything that needs no database and no turn first, as on `/ws`.
    check_origin(&req, &state)?;
    let q = web::Query::<SseQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let claims = authenticate(&req, &state, &q)?;
    let since = resume_point(&req, q.since.as_deref())?;
    let epoch = non_negative(q.epoch.as_deref(), "epoch")?;
    let topics = topic_list(q.topics.as_deref())?;
    if claims.is_none() && (topics.is_empty() || state.settings.public_topics.is_empty()) {
        return Err(ApiError::Unauthorized(
            "missing credentials: ?ticket= (POST /api/v1/me/tickets) or Authorization: Bearer; without them only public ?topics= can be followed".into(),
        ));
    }
    if let Some(bad) = topics
        .iter()
        .find(|t| !may_subscribe(&state, claims.as_ref(), t))
    {
        return Err(ApiError::Forbidden(format!(
            "{} does not allow topic {bad:?}",
            if claims.is_some() {
                "the token"
            } else {
                "an anonymous stream"
            }
        )));
    }
    if req.method() == Method::HEAD {
        return Ok(stream_head().finish());
    }
    if state.gateway.is_shutting_down() {
        return Err(refuse_shutting_down());
    }
    let permit = socket_permit(&req, &state, claims.as_ref())?;
    let conn = Conn::of(&req);
    let joining = match state.gateway.admission.admit().await {
        Ok(turn) => turn,
        Err(Refused::Closing) => return Err(refuse_shutting_down()),
        Err(busy) => return Ok(refuse_busy(busy.reason())),
    };
    still_there(conn.as_ref())?;
    if let Some(c) = &conn {
        // A peer that vanished stops acknowledging the heartbeats: the kernel drops it then.
        c.set_user_timeout(liveness_window(state.settings.heartbeat));
        // What the kernel holds for a client that stopped reading counts as taken by it
        // (`Body::drained`): kept small, so a stalled reader is found within the liveness
        // window, not after megabytes of autotuned buffer.
        c.set_send_buffer(SEND_BUFFER);
    }
    let me = SessionTx::new(state.gateway.next_id(), Transport::Sse);
    let shared = state.clone().into_inner();
    let span = tracing::info_span!(
        parent: None,
        "sse_session",
        user = claims.as_ref().map(|c| c.user.as_str()).unwrap_or("anonymous"),
        session = me.id,
        node = %state.settings.node_id,
    );
    if claims.is_none() {
        state.topics.open_anonymous(&me);
    }
    // Subscribed before `hello`: no event published from now on is missed. Answered (retained
    // values, then live) once `hello` is out, by the session's task.
    let pending = match subscribe(&req, &state, &me, claims.as_ref(), &topics) {
        Ok(p) => p,
        Err(e) => {
            state.topics.leave(me.id);
            return Err(e);
        }
    };
    let (actor, joined) = match &claims {
        Some(c) => match state
            .gateway
            .join(&shared, &c.user, me.clone(), since, epoch, joining)
        {
            Ok((actor, joined)) => (Some(actor), joined),
            Err(e) => {
                state.topics.leave(me.id);
                return Err(e);
            }
        },
        None => {
            let heartbeat_s = state.settings.heartbeat.as_secs().max(1);
            me.push_json(&protocol::hello_anonymous(heartbeat_s));
            anonymous_gauge(&me, 1.0);
            let (hello_sent, joined) = oneshot::channel();
            let _ = hello_sent.send(());
            drop(joining); // hello is out: the handshake's work is done
            (None, joined)
        }
    };
    span.in_scope(|| tracing::info!(resume_after = ?since, "sse session opened"));
    let drained = Rc::new(Cell::new(Instant::now()));
    let (alive, body_gone) = oneshot::channel();
    let (ready_tx, ready) = oneshot::channel();
    let body = Body {
        me: me.clone(),
        // A resume's `hello` names the seq the client resumed from, not the one the `sync`
        // frames after it bring it to: a stream cut between the two resumes from there again.
        hello_id: since.filter(|_| claims.is_some()),
        drained: drained.clone(),
        _alive: alive,
        ready: Some(ready),
        started: false,
        done: false,
    };
    actix_web::rt::spawn(
        run(Box::new(SessionCtx {
            me,
            actor,
            claims,
            joined,
            pending,
            ready: ready_tx,
            permit,
            conn,
            drained,
            body_gone,
            heartbeat: state.settings.heartbeat,
            state: shared,
        }))
        .instrument(span),
    );
    Ok(stream_head().streaming(body.into_stream()))
}

/// The stream's headers: never cached, never buffered by nginx.
fn stream_head() -> HttpResponseBuilder {
    let mut b = HttpResponse::Ok();
    b.content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"));
    b
}

/// A ticket (`?ticket=`) or a bearer header; neither: anonymous (`None`), which only public
/// topics allow. A user JWT in the URL is refused, whether valid or not.
fn authenticate(
    req: &HttpRequest,
    state: &AppState,
    q: &SseQuery,
) -> Result<Option<UserClaims>, ApiError> {
    // A JWT under any name of the URL: `token`, `access_token`, or whatever else a client
    // thought of (serde drops unknown parameters; they are looked at here).
    let jwt_elsewhere = || {
        web::Query::<Vec<(String, String)>>::from_query(req.query_string())
            .map(|all| {
                all.iter()
                    .filter(|(k, _)| !KNOWN_PARAMS.contains(&k.as_str()))
                    .any(|(_, v)| state.jwt.verify(v).is_ok())
            })
            .unwrap_or(false)
    };
    if q.token.is_some() || q.access_token.is_some() || jwt_elsewhere() {
        metrics::counter!("notifyd_sse_refused_total", "reason" => "jwt_in_url").increment(1);
        return Err(ApiError::Unauthorized(
            "a user JWT never goes in the SSE URL (URLs are logged): pass ?ticket= from POST /api/v1/me/tickets, or send Authorization: Bearer".into(),
        ));
    }
    let has_header = req.headers().contains_key(header::AUTHORIZATION);
    match (q.ticket.as_deref(), crate::auth::bearer(req)) {
        (Some(_), _) if has_header => Err(ApiError::Unauthorized(
            "a ticket or an Authorization header, not both".into(),
        )),
        (Some(ticket), _) => state
            .tickets
            .verify(ticket)
            .map(Some)
            .map_err(ApiError::Unauthorized),
        (None, Some(token)) => state
            .jwt
            .verify(token)
            .map(Some)
            .map_err(ApiError::Unauthorized),
        (None, None) if has_header => Err(ApiError::Unauthorized(
            "the Authorization header must be Bearer <token>".into(),
        )),
        (None, None) => Ok(None),
    }
}

/// Where a stream resumes: the `Last-Event-ID` an `EventSource` sends when it reconnects (the
/// last seq it applied), else `?since=`.
fn resume_point(req: &HttpRequest, since: Option<&str>) -> Result<Option<i64>, ApiError> {
    match req.headers().get("last-event-id") {
        Some(v) => non_negative(Some(v.to_str().unwrap_or("-")), "Last-Event-ID"),
        None => non_negative(since, "since"),
    }
}

/// `?topics=a,b` (empty entries ignored), at most `MAX_TOPICS_PER_FRAME` of them; each name is
/// checked by the router like any subscribe's.
fn topic_list(raw: Option<&str>) -> Result<Vec<String>, ApiError> {
    let topics: Vec<String> = raw
        .unwrap_or("")
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    if topics.len() > MAX_TOPICS_PER_FRAME {
        return Err(ApiError::validation(
            "topics",
            format!("at most {MAX_TOPICS_PER_FRAME} topics"),
        ));
    }
    Ok(topics)
}

/// Registers the stream on its topics within the same caps as a socket's `subscribe`.
fn subscribe(
    req: &HttpRequest,
    state: &AppState,
    me: &SessionTx,
    claims: Option<&UserClaims>,
    topics: &[String],
) -> Result<Option<Pending>, ApiError> {
    if topics.is_empty() {
        return Ok(None);
    }
    let holder = match claims {
        Some(c) => Holder::User(c.user.clone()),
        None => Holder::Address(
            crate::topics::public::client_ip(req, &state.settings.trusted_proxies)
                .map(crate::topics::public::client_key)
                .unwrap_or_default(),
        ),
    };
    state
        .topics
        .subscribe(me, holder, topics)
        .map(Some)
        .map_err(|(code, message)| match code {
            "validation_failed" => ApiError::validation("topics", message),
            code => ApiError::TooMany { code, message },
        })
}

/// The node has handshakes enough in flight and no place in its queue: `503` with a jittered
/// `Retry-After` (unlike a WebSocket's, an SSE client sees the status).
fn refuse_busy(reason: &'static str) -> HttpResponse {
    metrics::counter!("notifyd_ws_refused_total", "reason" => reason).increment(1);
    let mut res = ApiError::Unavailable("the server is busy; retry after Retry-After".into())
        .error_response();
    let secs = rand::random_range(1..=5u32);
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// The response body: the session's queue as SSE events.
struct Body {
    me: SessionTx,
    /// The event id of the first frame (a resume's `hello`), if not its own seq.
    hello_id: Option<i64>,
    /// When the body last found the queue empty: what it wrote before was taken.
    drained: Rc<Cell<Instant>>,
    /// Dropped with the body: the session's task learns that the stream is over.
    _alive: oneshot::Sender<()>,
    /// Fires once `hello` is queued and the stream's topics are live (or the session ended):
    /// nothing but the `retry:` line is written before, so a client that has read `hello`
    /// misses no topic event published after it.
    ready: Option<oneshot::Receiver<()>>,
    started: bool,
    done: bool,
}

impl Body {
    fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::unfold(self, |mut body| async move {
            let chunk = body.next_chunk().await?;
            Some((Ok(chunk), body))
        })
    }

    /// The next chunk of events, waiting for one if none is queued; `None` once the session
    /// closed (after its last words: see `closing`).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if self.done {
                return None;
            }
            let mut buf = BytesMut::new();
            if !self.started {
                self.started = true;
                sse::retry(&mut buf, sse::RETRY_MS);
                return Some(buf.freeze());
            }
            if let Some(ready) = self.ready.take() {
                let _ = ready.await;
            }
            let hello_id = &mut self.hello_id;
            let drained = self.me.drain_into(&mut buf, |buf, out, _| match out {
                Out::Text(frame) => sse::event(buf, &frame, hello_id.take()),
                Out::Ping(_) => buf.extend_from_slice(sse::PING),
                Out::Pong => {}
            });
            if let Drained::Closed(close) = drained {
                self.done = true;
                closing(&mut buf, close);
            }
            if !buf.is_empty() {
                return Some(buf.freeze());
            }
            self.drained.set(Instant::now());
            self.me.changed().await;
        }
    }
}

/// What a closing stream says last. A token that expired: an `error` event `token_expired`
/// (the ticket has expired with it, so `EventSource`'s reconnect fails; a client mints a new
/// one). A restarting or busy node: a jittered `retry:` so the reconnects spread. Anything else
/// (a slow consumer): nothing; `EventSource` comes back with `Last-Event-ID` and resumes.
fn closing(buf: &mut BytesMut, close: Option<(u16, &'static str)>) {
    let Some((code, reason)) = close else { return };
    metrics::counter!("notifyd_sse_closed_total", "code" => code.to_string()).increment(1);
    match code {
        close::TOKEN_EXPIRED => {
            let frame = protocol::error(&serde_json::Value::Null, "token_expired", reason);
            sse::event(buf, &frame.to_string(), None);
        }
        close::GOING_AWAY_RESTART | close::TRY_AGAIN_LATER => {
            let ms =
                protocol::retry_after_ms(reason).unwrap_or_else(|| rand::random_range(1000..=5000));
            sse::retry(buf, ms);
        }
        _ => {}
    }
}

/// What the session's task starts with (boxed, as `/ws`'s).
struct SessionCtx {
    me: SessionTx,
    actor: Option<MailboxSender>,
    claims: Option<UserClaims>,
    joined: oneshot::Receiver<()>,
    pending: Option<Pending>,
    ready: oneshot::Sender<()>,
    permit: SocketPermit,
    conn: Option<Conn>,
    drained: Rc<Cell<Instant>>,
    body_gone: oneshot::Receiver<()>,
    heartbeat: Duration,
    state: Arc<AppState>,
}

/// How the session's task saw the stream end.
enum Ended {
    /// The body is gone: the client left, or the stream ended after a close.
    BodyGone,
    /// The client closed its side while nothing was being written.
    PeerClosed,
    /// A close was asked for (by the lifetime, the actor, the router, shutdown).
    Closing,
}

/// The session's task: its lifetime, then its departure.
async fn run(ctx: Box<SessionCtx>) {
    let SessionCtx {
        me,
        actor,
        claims,
        joined,
        mut pending,
        ready,
        permit,
        conn,
        drained,
        mut body_gone,
        heartbeat,
        state,
    } = *ctx;
    let mut lifetime = Lifetime::new(heartbeat, claims.as_ref().map(|c| c.exp));
    // The timer also wakes every `PEER_CHECK` to see whether the client has gone (see there).
    let wake_at = |l: &Lifetime| l.deadline().min(Instant::now() + PEER_CHECK);
    let timer = tokio::time::sleep_until(wake_at(&lifetime));
    tokio::pin!(timer);
    let mut joined = Some(joined);
    let inbound = Inbound::new(state.clone(), actor, claims);
    let mut ready = Some(ready);
    let ended = loop {
        tokio::select! {
            biased;
            _ = &mut body_gone => break Ended::BodyGone,
            r = async {
                match joined.as_mut() {
                    Some(j) => j.await,
                    None => std::future::pending().await,
                }
            }, if joined.is_some() => {
                joined = None;
                match r {
                    Ok(()) => {
                        // `hello` is queued: the topics' retained values follow it, and the
                        // body starts writing once they are live.
                        let ready = ready.take();
                        let router = state.topics.clone();
                        let pending = pending.take();
                        tokio::spawn(
                            async move {
                                if let Some(p) = pending {
                                    router.finish(p, None).await;
                                }
                                if let Some(r) = ready {
                                    let _ = r.send(());
                                }
                            }
                            .instrument(tracing::Span::current()),
                        );
                    }
                    // The actor could not take the session (it closed it).
                    _ => break Ended::Closing,
                }
            }
            _ = &mut timer => {
                if me.closing().is_some() {
                    break Ended::Closing;
                }
                if conn.as_ref().is_some_and(Conn::peer_closed) {
                    break Ended::PeerClosed;
                }
                lifetime.read_until(drained.get());
                match lifetime.tick(Instant::now()) {
                    Tick::Wait => {}
                    Tick::Ping(nonce) => me.ping(nonce),
                    Tick::End((code, reason)) => {
                        me.close_with(code, reason);
                        break Ended::Closing;
                    }
                }
                timer.as_mut().reset(wake_at(&lifetime));
            }
        }
    };
    match ended {
        Ended::BodyGone => {}
        Ended::PeerClosed => {
            if let Some(c) = &conn {
                c.hard_drop();
            }
        }
        Ended::Closing => {
            // The body writes the last words and ends the stream; a client that does not take
            // them in time is reset (its body may not even be polled any more).
            let grace = match me.closing() {
                Some((close::SLOW_CONSUMER | close::GOING_AWAY_RESTART, _)) => {
                    close_grace(heartbeat)
                }
                _ => SHORT_GRACE,
            };
            if tokio::time::timeout(grace, &mut body_gone).await.is_err() {
                if let Some(c) = &conn {
                    c.hard_drop();
                }
            }
        }
    }
    me.end();
    inbound.depart(&me);
    drop(permit);
    tracing::info!("sse session ended");
}
