//! One WebSocket connection, one task (`run`): it writes every outbound frame (events, replies,
//! pings, pongs, the close) from the session's bounded queue (`outbound`), and reads client
//! frames, watches liveness and the token's lifetime. It never waits on the client for long: a
//! write the socket cannot take yet is kept while reading and the liveness check go on, so a
//! slow or silent client cannot block its user's actor, other sessions, or its own liveness
//! check. (One task, not a reader and a writer: an idle node holds one of these per socket.)

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason};
use bytes::Bytes;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::conn::Conn;
use super::mailbox::{ActorMsg, MailboxSender, SessionCommand, TrySendError};
use super::sockets::SocketPermit;
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::inbox::create;
use crate::inbox::direct::{self, Via};
use crate::model::input::check_idempotency_key;
use crate::ratelimit::SessionRate;
use crate::state::AppState;
use crate::topics::router::Holder;
use crate::wire::outbound::{Next, Out, SessionTx};
use crate::wire::protocol::{self, close, ClientFrame};

/// Commands (read, read_all, seen_all, subscribe, publish, send) one session may have in flight;
/// more are answered `busy`.
pub const MAX_COMMANDS_IN_FLIGHT: usize = 4;
/// Bad frames tolerated on one connection before it is closed as abusive.
const MAX_BAD_FRAMES: u32 = 20;
/// How long a client closed for its own behaviour has to take its close frame before the
/// connection is reset.
const SHORT_GRACE: Duration = Duration::from_secs(2);
/// Pings remembered for matching pongs (a slow but reading client may answer an older one).
const OUTSTANDING_PINGS: usize = 4;
/// Token renewals one session may send: at most one per this interval, others get `busy`.
const AUTH_EVERY: Duration = Duration::from_secs(1);
/// How long a `publish` waits for one of the node's database command permits.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// Writes one frame taken from the queue. Cancel-safe: dropped before it completes, nothing
/// was sent and the caller writes the same frame again. (`None` never resolves: `select!`
/// builds a disabled branch's future too.)
async fn write(
    ws: &mut actix_ws::Session,
    out: Option<&(Out, Option<Bytes>)>,
) -> Result<(), actix_ws::Closed> {
    let Some(out) = out else {
        return std::future::pending().await;
    };
    match out {
        (Out::Text(text), _) => ws.text(shared_text(text.clone())).await,
        (Out::Ping(nonce), _) => ws.ping(&nonce.to_be_bytes()).await,
        (Out::Pong, Some(bytes)) => ws.pong(bytes).await,
        (Out::Pong, None) => Ok(()),
    }
}

/// Frames written by `flush` before the session task looks at its socket and timers again.
const FLUSH_BATCH: usize = 64;

enum Flushed {
    /// The queue is empty.
    Empty,
    /// A batch was written; more may wait.
    More,
    /// actix-ws's channel is full: this frame waits (the socket is slow).
    Blocked(Box<(Out, Option<Bytes>)>),
    /// A close was asked for.
    Close,
    /// The connection is gone.
    Gone,
}

/// Writes queued frames while actix-ws's channel takes them at once, up to `FLUSH_BATCH`: a
/// burst (a topic fanned out to every socket) costs one pass of the session's select per
/// batch, not per frame. A write that would wait is kept for the select (`write` is
/// cancel-safe: polled once and dropped, it sent nothing).
fn flush(ws: &mut actix_ws::Session, me: &SessionTx) -> Flushed {
    use futures_util::FutureExt;
    for _ in 0..FLUSH_BATCH {
        let frame = match me.next() {
            None => return Flushed::Empty,
            Some(Next::Close) => return Flushed::Close,
            Some(Next::Write(out, pong)) => (out, pong),
        };
        match write(ws, Some(&frame)).now_or_never() {
            Some(Ok(())) => {}
            Some(Err(_)) => return Flushed::Gone,
            None => return Flushed::Blocked(Box::new(frame)),
        }
    }
    Flushed::More
}

/// Sends the close frame and makes sure the connection goes. The close frame queues behind
/// what the socket already holds, so it waits up to `grace` for a slow client to read that far
/// (a client that resumes reading then sees its 4008 and resumes with `since`); a connection
/// still there after another `grace` is reset.
pub async fn close_connection(
    ws: actix_ws::Session,
    (code, text): (u16, &'static str),
    grace: Duration,
    conn: Option<Conn>,
) {
    metrics::counter!("notifyd_ws_closed_total", "code" => code.to_string()).increment(1);
    let close = CloseReason {
        code: CloseCode::from(code),
        description: Some(text.to_string()),
    };
    // A slow consumer gets the whole grace to read what it was sent, then the close frame;
    // a client closed for what it did (too large, expired, silent, abusive) only a moment.
    let grace = if code == close::SLOW_CONSUMER || code == close::GOING_AWAY_RESTART {
        grace
    } else {
        grace.min(SHORT_GRACE)
    };
    let _ = tokio::time::timeout(grace, ws.close(Some(close))).await;
    if let Some(conn) = conn {
        conn.drop_after(grace).await;
    }
}

/// How long a client may go without answering a ping before it counts as not reading: two
/// missed heartbeats and half of the third.
pub fn liveness_window(heartbeat: Duration) -> Duration {
    heartbeat * 2 + heartbeat / 2
}

/// How long a closing session's last frames and close frame get to drain: the same time a live
/// client has to answer a ping.
pub fn close_grace(heartbeat: Duration) -> Duration {
    liveness_window(heartbeat)
}

/// What the session's task starts with. (Handed over boxed: an `async fn` keeps its arguments
/// beside the locals they are moved into, and this task is the one per socket.)
pub struct SessionCtx {
    pub ws: actix_ws::Session,
    pub stream: actix_ws::MessageStream,
    pub me: SessionTx,
    /// The user's actor (the inbox); `None` for an anonymous viewer of public topics.
    pub actor: Option<MailboxSender>,
    /// Fires once `hello` was sent: client frames wait for it, so nothing the session answers
    /// (a `pong`) can overtake `hello`.
    pub joined: oneshot::Receiver<()>,
    pub heartbeat: Duration,
    pub state: Arc<AppState>,
    /// The token's claims (`None`: anonymous). Its `exp` closes the session with 4001 unless
    /// renewed in-band.
    pub claims: Option<UserClaims>,
    /// Held while the session lives: counts against the user's socket limit.
    pub permit: SocketPermit,
    /// Held until `hello` was sent: counts against the node's handshakes in flight
    /// (`NOTIFYD_WS_MAX_JOINING`).
    pub joining: Option<OwnedSemaphorePermit>,
    pub conn: Option<Conn>,
}

/// The session's command slots (`MAX_COMMANDS_IN_FLIGHT`), made when first needed.
fn slots(in_flight: &mut Option<Arc<Semaphore>>) -> &Arc<Semaphore> {
    in_flight.get_or_insert_with(|| Arc::new(Semaphore::new(MAX_COMMANDS_IN_FLIGHT)))
}

/// Resolves when the actor has sent `hello` (or refused the session); never once it has.
async fn wait_joined(
    joined: &mut Option<oneshot::Receiver<()>>,
) -> Result<(), oneshot::error::RecvError> {
    match joined {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Far enough in the future to stand for "never" (an anonymous session's token expiry).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The last `OUTSTANDING_PINGS` ping nonces not yet answered, oldest first (a slow but
/// reading client may answer an older one). Inline: no allocation per socket.
#[derive(Default)]
struct Pings {
    nonces: [u64; OUTSTANDING_PINGS],
    len: usize,
}

impl Pings {
    /// Remembers `nonce` (forgetting the oldest when full) and returns it.
    fn push(&mut self, nonce: u64) -> u64 {
        if self.len == OUTSTANDING_PINGS {
            self.nonces.copy_within(1.., 0);
            self.len -= 1;
        }
        self.nonces[self.len] = nonce;
        self.len += 1;
        nonce
    }

    /// Whether `payload` echoes a remembered nonce; that one and every older one are then
    /// forgotten.
    fn answered(&mut self, payload: &[u8]) -> bool {
        let Some(i) = self.nonces[..self.len]
            .iter()
            .position(|n| payload == n.to_be_bytes())
        else {
            return false;
        };
        self.nonces.copy_within(i + 1..self.len, 0);
        self.len -= i + 1;
        true
    }
}

fn deadline_of(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.max(0) as u64)
}

/// The session's one task: writes what its queue holds, reads client frames, answers pings,
/// sends a ping every heartbeat and closes a session that has not answered for the liveness
/// window or whose token expired. Commands go to the user's actor, at most
/// `MAX_COMMANDS_IN_FLIGHT` at a time. A write waiting on a slow socket never holds up reading
/// or the liveness check (the select below keeps the frame and tries again), and a close asked
/// for by anyone interrupts it.
pub async fn run(ctx: Box<SessionCtx>) {
    let SessionCtx {
        mut ws,
        stream,
        me,
        actor,
        joined,
        heartbeat,
        state,
        mut claims,
        permit,
        mut joining,
        conn,
    } = *ctx;
    let anonymous = claims.is_none();
    let mut stream = stream
        .max_frame_size(protocol::MAX_CLIENT_FRAME)
        .aggregate_continuations()
        .max_continuation_size(protocol::MAX_CLIENT_FRAME)
        .max_continuation_frames(protocol::MAX_CLIENT_FRAGMENTS);
    // Made at the first command (most sessions never send one).
    let mut in_flight: Option<Arc<Semaphore>> = None;
    // One timer serves the heartbeat and the token's expiry (it fires at whichever is first):
    // a task per socket carries one, not two.
    let mut next_ping = Instant::now() + heartbeat;
    let mut expires = match &claims {
        Some(c) => deadline_of(c.exp),
        None => Instant::now() + NEVER,
    };
    let timer = tokio::time::sleep_until(next_ping.min(expires));
    tokio::pin!(timer);
    let mut joined = Some(joined);
    let mut is_joined = false;
    let mut last_pong = Instant::now();
    // Nonces of the pings not yet answered: only a pong echoing one of them shows the client
    // read that far; unsolicited pongs prove nothing.
    let mut pings = Pings::default();
    let mut last_auth: Option<Instant> = None;
    // `subscribe`/`unsubscribe` frames of this session (8 bytes, inline: every socket has one).
    let mut topic_rate = SessionRate::default();
    let mut bad = 0u32;
    // The frame taken from the queue that actix-ws has not accepted yet (its channel is full
    // while the socket is slow).
    // (Boxed while it waits: a socket's task carries a pointer, not the frame, when idle.)
    let mut pending: Option<Box<(Out, Option<Bytes>)>> = None;
    loop {
        // A full batch was written and more may wait: look at the socket and timers, let the
        // worker's other tasks run, then write on.
        let mut more = false;
        if pending.is_none() {
            match flush(&mut ws, &me) {
                Flushed::Empty => {}
                Flushed::More => more = true,
                Flushed::Blocked(frame) => pending = Some(frame),
                Flushed::Close | Flushed::Gone => break,
            }
        } else if me.closing().is_some() {
            break;
        }
        tokio::select! {
            biased;
            // A frame was queued or a close asked for: the loop's head looks.
            _ = me.changed() => {}
            sent = write(&mut ws, pending.as_deref()), if pending.is_some() => {
                if sent.is_err() {
                    break; // the connection is gone
                }
                pending = None;
            }
            r = wait_joined(&mut joined), if !is_joined => {
                joined = None; // frees the channel
                // Joined or refused, this handshake no longer counts as in flight.
                drop(joining.take());
                if r.is_err() {
                    break; // the actor could not take the session (it closed it)
                }
                is_joined = true;
            }
            _ = &mut timer => {
                let now = Instant::now();
                if now >= expires {
                    metrics::counter!("notifyd_ws_token_expired_total").increment(1);
                    me.close_with(close::TOKEN_EXPIRED, "token expired");
                    break;
                }
                if now >= next_ping {
                    if last_pong.elapsed() > liveness_window(heartbeat) {
                        metrics::counter!("notifyd_ws_liveness_closed_total").increment(1);
                        me.close_with(close::POLICY, "missed heartbeats");
                        break;
                    }
                    me.ping(pings.push(rand::random::<u64>()));
                    next_ping += heartbeat;
                }
                timer.as_mut().reset(next_ping.min(expires));
            }
            msg = stream.recv(), if is_joined => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(actix_ws::AggregatedMessage::Text(text)) => match protocol::parse(&text) {
                        Ok(ClientFrame::Ping { r#ref }) => {
                            me.push_json(&protocol::pong(&r#ref));
                        }
                        Ok(ClientFrame::Auth { token, r#ref }) => {
                            let now = Instant::now();
                            let too_soon = last_auth.is_some_and(|t| now.duration_since(t) < AUTH_EVERY);
                            match renew(&state, claims.as_ref(), &token, too_soon) {
                                Ok(renewed) => {
                                    last_auth = Some(now);
                                    expires = deadline_of(renewed.exp);
                                    timer.as_mut().reset(next_ping.min(expires));
                                    me.push_json(&protocol::ack(&r#ref, serde_json::json!({ "exp": renewed.exp })));
                                    revoke_topics(&state, &me, &renewed);
                                    claims = Some(renewed);
                                }
                                Err((code, message)) => {
                                    // A refused token counts like any bad frame (and so is limited).
                                    bad += 1;
                                    me.push_json(&protocol::error(&r#ref, code, message));
                                }
                            }
                        }
                        Ok(ClientFrame::Subscribe { topics, r#ref }) => {
                            if topic_command_allowed(&state, &me, &mut topic_rate, &r#ref) {
                                subscribe(&state, &me, claims.as_ref(), permit.key(), slots(&mut in_flight), topics, r#ref);
                            }
                        }
                        Ok(ClientFrame::Unsubscribe { topics, r#ref }) => {
                            if topic_command_allowed(&state, &me, &mut topic_rate, &r#ref) {
                                state.topics.unsubscribe(me.id, &topics);
                                me.push_json(&protocol::ack(&r#ref, serde_json::json!({ "topics": topics })));
                            }
                        }
                        Ok(ClientFrame::Publish { topic, data, r#ref }) => {
                            publish(&state, &me, claims.as_ref(), slots(&mut in_flight), topic, data, r#ref);
                        }
                        Ok(frame @ ClientFrame::Send { .. }) if !anonymous => {
                            match (claims.as_ref(), slots(&mut in_flight).clone().try_acquire_owned()) {
                                (Some(c), Ok(slot)) => send_direct(&state, c, frame, &me, slot),
                                _ => busy(&me, &frame),
                            }
                        }
                        Ok(frame) => match (&actor, slots(&mut in_flight).clone().try_acquire_owned()) {
                            (None, _) => {
                                me.push_json(&protocol::error(frame.r#ref(), "unauthorized", "an anonymous session has no inbox: connect with a token"));
                            }
                            (Some(actor), Ok(slot)) => match actor.try_send(ActorMsg::Command(Box::new(SessionCommand { session: me.id, frame, slot }))) {
                                Ok(()) => {}
                                Err(TrySendError::Full(ActorMsg::Command(c))) => busy(&me, &c.frame),
                                Err(_) => break,
                            },
                            (Some(_), Err(_)) => busy(&me, &frame),
                        },
                        Err(e) => {
                            bad += 1;
                            bad_frame(&me, &e);
                        }
                    },
                    Ok(actix_ws::AggregatedMessage::Binary(_)) => {
                        bad += 1;
                        bad_frame(&me, &protocol::FrameError {
                            r#ref: serde_json::Value::Null,
                            code: "bad_frame",
                            message: "binary frames are not supported; send JSON text".into(),
                        });
                    }
                    Ok(actix_ws::AggregatedMessage::Ping(bytes)) => me.pong(&bytes),
                    Ok(actix_ws::AggregatedMessage::Pong(bytes)) => {
                        if pings.answered(&bytes) {
                            last_pong = Instant::now();
                        }
                    }
                    Ok(actix_ws::AggregatedMessage::Close(_)) => {
                        me.close_with(1000, "bye");
                        break;
                    }
                    Err(e) => {
                        // The client's fault, never the server's: logged below warn.
                        tracing::debug!(error = %e, "websocket protocol error");
                        let (code, reason) = close_for(&e);
                        metrics::counter!("notifyd_ws_protocol_errors_total", "code" => code.to_string()).increment(1);
                        me.close_with(code, reason);
                        break;
                    }
                }
                if bad > MAX_BAD_FRAMES {
                    me.close_with(close::UNSUPPORTED, "too many bad frames");
                    break;
                }
            }
            // Last: every other branch was looked at first.
            _ = tokio::task::yield_now(), if more => {}
        }
    }
    let close = me.closing();
    me.end();
    drop(pending);
    // Boxed: what only a closing session needs (timers, the close frame) is not carried in
    // every open session's task.
    Box::pin(async move {
        let depart = async {
            state.topics.leave(me.id);
            // The actor must hear of every departure (presence, gauges): taken past the
            // mailbox's bound (an actor that is gone needs no telling).
            if let Some(actor) = actor {
                let _ = actor.send_always(ActorMsg::Leave { session: me.id });
            } else {
                metrics::gauge!("notifyd_ws_anonymous_connections").decrement(1.0);
            }
            drop(permit);
        };
        let closing = async {
            if let Some(reason) = close {
                close_connection(ws, reason, close_grace(heartbeat), conn.clone()).await;
            }
        };
        tokio::join!(depart, closing);
        // Keep the request stream (unread) until the connection is gone: dropped, actix-http
        // would read and discard whatever a client that was just closed keeps streaming; held,
        // the client meets TCP backpressure until `close_connection` resets the connection.
        if let Some(conn) = conn {
            conn.wait_closed(liveness_window(heartbeat) * 3).await;
        }
        drop(stream);
    })
    .await;
    tracing::info!("websocket session ended");
}

/// Answers a frame that could not be accepted (each one counts towards `MAX_BAD_FRAMES`).
fn bad_frame(me: &SessionTx, e: &protocol::FrameError) {
    metrics::counter!("notifyd_ws_bad_frames_total", "code" => e.code).increment(1);
    me.push_json(&protocol::error(&e.r#ref, e.code, &e.message));
}

fn busy(me: &SessionTx, frame: &ClientFrame) {
    busy_ref(me, frame.r#ref())
}

fn busy_ref(me: &SessionTx, r#ref: &serde_json::Value) {
    metrics::counter!("notifyd_ws_commands_busy_total").increment(1);
    me.push_json(&protocol::error(
        r#ref,
        "busy",
        &format!("at most {MAX_COMMANDS_IN_FLIGHT} commands in flight per connection; retry when one is answered"),
    ));
}

/// An in-band `auth`: a fresh token for the same user extends the session past the old `exp`.
/// At most one renewal per `AUTH_EVERY`.
fn renew(
    state: &AppState,
    current: Option<&UserClaims>,
    token: &str,
    too_soon: bool,
) -> Result<UserClaims, (&'static str, &'static str)> {
    let Some(current) = current else {
        return Err((
            "unauthorized",
            "an anonymous session cannot take a token: reconnect with it",
        ));
    };
    let claims = state
        .jwt
        .verify(token)
        .map_err(|_| ("unauthorized", "invalid or expired token"))?;
    if claims.user != current.user {
        return Err(("unauthorized", "the token is for another user"));
    }
    if too_soon {
        metrics::counter!("notifyd_ws_commands_busy_total").increment(1);
        return Err(("busy", "at most one renewal per second"));
    }
    Ok(claims)
}

/// Whether `claims` (or, for anyone, `NOTIFYD_PUBLIC_TOPICS`) let a session subscribe to `topic`.
fn may_subscribe(state: &AppState, claims: Option<&UserClaims>, topic: &str) -> bool {
    claims.is_some_and(|c| c.may_subscribe(topic)) || state.settings.is_public_topic(topic)
}

/// A renewed token decides the session's topics from now on: those it no longer allows are
/// dropped at once, and the session is told with an `error` frame `forbidden` (after the ack).
fn revoke_topics(state: &AppState, me: &SessionTx, claims: &UserClaims) {
    let revoked = state
        .topics
        .revoke(me.id, |t| may_subscribe(state, Some(claims), t));
    if !revoked.is_empty() {
        me.push_json(&protocol::error(
            &serde_json::Value::Null,
            "forbidden",
            &format!("the renewed token does not allow {revoked:?}: unsubscribed"),
        ));
    }
}

/// Takes one of the session's `subscribe`/`unsubscribe` turns (`NOTIFYD_SUBSCRIBE_RATE`, burst
/// `NOTIFYD_SUBSCRIBE_BURST`; contract §7), or answers `rate_limited` and says no. Every such
/// frame counts, refused or not: each may (un)subscribe broker channels, and a session churning
/// them is what the limit is for.
fn topic_command_allowed(
    state: &AppState,
    me: &SessionTx,
    rate: &mut SessionRate,
    r#ref: &serde_json::Value,
) -> bool {
    let (per_second, burst) = (
        state.settings.subscribe_rate,
        state.settings.subscribe_burst,
    );
    match rate.take(per_second, burst) {
        Ok(()) => true,
        Err(wait) => {
            metrics::counter!("notifyd_rate_limited_total", "what" => "subscribe").increment(1);
            me.push_json(&protocol::error(
                r#ref,
                "rate_limited",
                &format!(
                    "at most {per_second} subscribes and unsubscribes per second (burst {burst}) per connection; retry in {} ms",
                    wait.as_millis().max(1)
                ),
            ));
            false
        }
    }
}

/// `subscribe`: checked and registered here, answered (ack, then retained values) by a task
/// holding one of the session's command slots (it may wait on Redis and PostgreSQL). An
/// anonymous session's topics count against its client `address` (the key its socket is
/// counted under), a user's against the user.
fn subscribe(
    state: &AppState,
    me: &SessionTx,
    claims: Option<&UserClaims>,
    address: &str,
    in_flight: &Arc<Semaphore>,
    topics: Vec<String>,
    r#ref: serde_json::Value,
) {
    if let Some(bad) = topics.iter().find(|t| !may_subscribe(state, claims, t)) {
        me.push_json(&protocol::error(
            &r#ref,
            "forbidden",
            &format!("token does not allow topic {bad:?}"),
        ));
        return;
    }
    let Ok(slot) = in_flight.clone().try_acquire_owned() else {
        return busy_ref(me, &r#ref);
    };
    let holder = match claims {
        Some(c) => Holder::User(c.user.clone()),
        None => Holder::Address(address.to_string()),
    };
    match state.topics.subscribe(me, holder, &topics) {
        Ok(pending) => {
            let state = state.clone();
            tokio::spawn(
                async move {
                    let _slot = slot;
                    state.topics.finish(&state, pending, r#ref).await;
                }
                .instrument(tracing::Span::current()),
            );
        }
        Err((code, message)) => {
            me.push_json(&protocol::error(&r#ref, code, &message));
        }
    }
}

/// A `send` frame: a direct message, created beside the session (not through the user's actor,
/// which serves the recipient's inbox, not the sender's) while it holds one of the session's
/// command slots; `inbox::direct` takes the node's database permit after its checks.
fn send_direct(
    state: &AppState,
    claims: &UserClaims,
    frame: ClientFrame,
    me: &SessionTx,
    slot: OwnedSemaphorePermit,
) {
    let ClientFrame::Send {
        to_user,
        message,
        key,
        r#ref,
    } = frame
    else {
        return;
    };
    let key = match key {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(k)) => match check_idempotency_key(&k, "key") {
            Ok(()) => Some(k),
            Err(e) => {
                me.push_json(&protocol::api_error(&r#ref, &e));
                return;
            }
        },
        Some(_) => {
            let e = ApiError::validation("key", "must be a string");
            me.push_json(&protocol::api_error(&r#ref, &e));
            return;
        }
    };
    let (state, claims, me) = (state.clone(), claims.clone(), me.clone());
    tokio::spawn(
        async move {
            let _slot = slot;
            let sent = direct::send(
                &state,
                &claims,
                Some(&to_user),
                Some(&message),
                key.as_deref(),
                Via::Socket,
            )
            .await;
            match sent {
                Ok(sent) => {
                    let extra = if sent.replayed {
                        serde_json::json!({"id": sent.id, "replayed": true})
                    } else {
                        serde_json::json!({"id": sent.id})
                    };
                    me.push_json(&protocol::ack(&r#ref, extra));
                }
                Err(e) => {
                    me.push_json(&protocol::api_error(&r#ref, &e));
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// `publish` (contract §8, groups): allowed by the token's `publish` claim, rate-limited per
/// user, created through the same path as the REST publish with `from` taken from the token.
/// The transaction runs in a task holding a command slot and one of the node's database
/// command permits, so the session never waits on the database.
fn publish(
    state: &AppState,
    me: &SessionTx,
    claims: Option<&UserClaims>,
    in_flight: &Arc<Semaphore>,
    topic: String,
    data: serde_json::Value,
    r#ref: serde_json::Value,
) {
    let refuse = |code: &str, message: &str| {
        me.push_json(&protocol::error(&r#ref, code, message));
    };
    let Some(claims) = claims else {
        return refuse("unauthorized", "an anonymous session cannot publish");
    };
    if !claims.may_publish(&topic) {
        return refuse(
            "forbidden",
            &format!("token does not allow publishing to {topic:?}"),
        );
    }
    let Ok(slot) = in_flight.clone().try_acquire_owned() else {
        return busy_ref(me, &r#ref);
    };
    if let Err(wait) = state.limits.publish.take(&claims.user) {
        return refuse(
            "rate_limited",
            &format!(
                "at most {} publishes per second (burst {}); retry in {} ms",
                crate::ratelimit::PUBLISH_PER_SECOND,
                crate::ratelimit::PUBLISH_BURST,
                wait.as_millis().max(1)
            ),
        );
    }
    let (state, me, user) = (state.clone(), me.clone(), claims.user.clone());
    tokio::spawn(
        async move {
            let _slot = slot;
            let result = async {
                let _permit = tokio::time::timeout(
                    PUBLISH_WAIT,
                    state.gateway.db_commands.clone().acquire_owned(),
                )
                .await
                .map_err(|_| ApiError::Unavailable("the server is busy; retry".into()))?
                .map_err(|_| ApiError::Unavailable("shutting down".into()))?;
                let ev = create::TopicEvent {
                    topic: &topic,
                    data: &data,
                    from: Some(&user),
                    retain_until: None,
                };
                state
                    .db(async |conn| create::topic_event(conn, &ev).await)
                    .await
            }
            .await;
            match result {
                Ok(id) => {
                    state.waker.wake();
                    metrics::counter!("notifyd_topic_client_publishes_total").increment(1);
                    me.push_json(&protocol::ack(&r#ref, serde_json::json!({ "id": id })));
                }
                Err(e) => {
                    me.push_json(&protocol::error(&r#ref, e.code(), &e.to_string()));
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
}

/// The close code and reason for a frame the WebSocket layer refused.
pub fn close_for(e: &actix_ws::ProtocolError) -> (u16, &'static str) {
    use actix_ws::ProtocolError as P;
    match e {
        P::Overflow => (close::TOO_BIG, "message too large"),
        // actix-ws reports a text message's invalid UTF-8 as an `InvalidData` I/O error carrying
        // the `Utf8Error` (patches/actix-ws.md makes the fragmented path do the same).
        P::Io(io) if io.get_ref().is_some_and(|e| e.is::<std::str::Utf8Error>()) => {
            (close::INVALID_DATA, "invalid UTF-8 in a text message")
        }
        _ => (close::PROTOCOL_ERROR, "protocol error"),
    }
}

/// The text of a shared frame as actix-ws takes it, without copying it: the frame's buffer
/// is kept alive by the `Arc` until the socket has written it (the UTF-8 check is a scan, not
/// a copy).
pub fn shared_text(text: Arc<str>) -> bytestring::ByteString {
    struct Shared(Arc<str>);
    impl AsRef<[u8]> for Shared {
        fn as_ref(&self) -> &[u8] {
            self.0.as_bytes()
        }
    }
    let fallback = text.clone();
    bytestring::ByteString::try_from(Bytes::from_owner(Shared(text)))
        .unwrap_or_else(|_| bytestring::ByteString::from(fallback.as_ref()))
}
