//! One WebSocket connection: a writer task that owns every outbound frame (events, replies,
//! pings, pongs, the close) fed by a bounded queue, and a reader task for client frames,
//! liveness and the token's lifetime. Neither ever waits on the other or on the client: a slow
//! or silent client cannot block its user's actor, other sessions, or its own liveness check.

use std::cell::Cell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::conn::Conn;
use super::mailbox::{ActorMsg, SessionCommand};
use super::outbound::{Out, Outbox, SessionTx};
use super::protocol::{self, close, ClientFrame};
use super::sockets::SocketPermit;
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::inbox::create;
use crate::inbox::direct::{self, Via};
use crate::inbox::input::check_idempotency_key;
use crate::state::AppState;

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

/// Writes queued frames until closed. A close request interrupts even a write stuck on a slow
/// socket. The close frame queues behind what the socket already holds, so it waits up to
/// `grace` for a slow client to read that far (a client that resumes reading then sees its 4008
/// and resumes with `since`); a connection still there after another `grace` is reset.
pub async fn writer(
    mut session: actix_ws::Session,
    mut out: Outbox,
    grace: Duration,
    conn: Option<Conn>,
) {
    let reason = loop {
        if let Some(r) = *out.close.borrow() {
            break Some(r);
        }
        tokio::select! {
            biased;
            _ = out.close.changed() => continue,
            frame = out.frames.recv() => {
                let sent = match frame {
                    None => break None,
                    Some(Out::Text(text)) => {
                        out.queued.fetch_sub(text.len(), Ordering::Relaxed);
                        tokio::select! {
                            r = session.text(super::outbound::shared_text(text)) => r,
                            _ = out.close.changed() => continue,
                        }
                    }
                    Some(Out::Ping(nonce)) => {
                        let nonce = nonce.to_be_bytes();
                        tokio::select! {
                            r = session.ping(&nonce) => r,
                            _ = out.close.changed() => continue,
                        }
                    }
                    Some(Out::Pong) => match out.take_pong() {
                        None => Ok(()),
                        Some(bytes) => tokio::select! {
                            r = session.pong(&bytes) => r,
                            _ = out.close.changed() => continue,
                        },
                    },
                };
                if sent.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, text)) = reason {
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
        let _ = tokio::time::timeout(grace, session.close(Some(close))).await;
        if let Some(conn) = conn {
            conn.drop_after(grace).await;
        }
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

/// What the reader needs besides the socket.
pub struct ReaderCtx {
    pub me: SessionTx,
    /// The user's actor (the inbox); `None` for an anonymous viewer of public topics.
    pub actor: Option<mpsc::Sender<ActorMsg>>,
    /// Fires once `hello` was sent: client frames wait for it, so nothing the reader answers
    /// (a `pong`) can overtake `hello`.
    pub joined: oneshot::Receiver<()>,
    pub heartbeat: Duration,
    pub state: AppState,
    /// The token's claims (`None`: anonymous). Its `exp` closes the session with 4001 unless
    /// renewed in-band.
    pub claims: Option<UserClaims>,
    /// Set by the frame guard when it refused a frame for its size.
    pub too_big: Rc<Cell<bool>>,
    /// Held while the session lives: counts against the user's socket limit.
    pub permit: SocketPermit,
    /// Held until `hello` was sent: counts against the node's handshakes in flight
    /// (`NOTIFYD_WS_MAX_JOINING`).
    pub joining: Option<OwnedSemaphorePermit>,
    pub conn: Option<Conn>,
}

fn deadline_of(exp: i64) -> Instant {
    let left = exp - chrono::Utc::now().timestamp();
    Instant::now() + Duration::from_secs(left.max(0) as u64)
}

/// Reads client frames, answers pings, sends a ping every heartbeat through the writer and
/// closes a session that has not answered for the liveness window or whose token expired.
/// Commands go to the user's actor, at most `MAX_COMMANDS_IN_FLIGHT` at a time.
pub async fn reader(stream: actix_ws::MessageStream, ctx: ReaderCtx) {
    let ReaderCtx {
        me,
        actor,
        mut joined,
        heartbeat,
        state,
        mut claims,
        too_big,
        permit,
        mut joining,
        conn,
    } = ctx;
    let anonymous = claims.is_none();
    let mut stream = stream
        .max_frame_size(protocol::MAX_CLIENT_FRAME)
        .aggregate_continuations()
        .max_continuation_size(protocol::MAX_CLIENT_FRAME);
    let in_flight = Arc::new(Semaphore::new(MAX_COMMANDS_IN_FLIGHT));
    let mut close_rx = me.close.subscribe();
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let expiry = tokio::time::sleep_until(deadline_of(claims.as_ref().map_or(0, |c| c.exp)));
    tokio::pin!(expiry);
    let mut is_joined = false;
    let mut last_pong = Instant::now();
    // Nonces of the pings not yet answered (newest last): only a pong echoing one of them
    // shows the client read that far; unsolicited pongs prove nothing.
    let mut pings: VecDeque<u64> = VecDeque::new();
    let mut last_auth: Option<Instant> = None;
    let mut bad = 0u32;
    loop {
        tokio::select! {
            _ = close_rx.changed() => break,
            r = &mut joined, if !is_joined => {
                // Joined or refused, this handshake no longer counts as in flight.
                drop(joining.take());
                if r.is_err() {
                    break; // the actor could not take the session (it closed it)
                }
                is_joined = true;
            }
            _ = tick.tick() => {
                if last_pong.elapsed() > liveness_window(heartbeat) {
                    metrics::counter!("notifyd_ws_liveness_closed_total").increment(1);
                    me.close_with(close::POLICY, "missed heartbeats");
                    break;
                }
                let nonce = rand::random::<u64>();
                if pings.len() == OUTSTANDING_PINGS {
                    pings.pop_front();
                }
                pings.push_back(nonce);
                me.ping(nonce);
            }
            _ = &mut expiry, if !anonymous => {
                metrics::counter!("notifyd_ws_token_expired_total").increment(1);
                me.close_with(close::TOKEN_EXPIRED, "token expired");
                break;
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
                                    expiry.as_mut().reset(deadline_of(renewed.exp));
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
                            subscribe(&state, &me, claims.as_ref(), &in_flight, topics, r#ref);
                        }
                        Ok(ClientFrame::Unsubscribe { topics, r#ref }) => {
                            state.topics.unsubscribe(me.id, &topics);
                            me.push_json(&protocol::ack(&r#ref, serde_json::json!({ "topics": topics })));
                        }
                        Ok(ClientFrame::Publish { topic, data, r#ref }) => {
                            publish(&state, &me, claims.as_ref(), &in_flight, topic, data, r#ref);
                        }
                        Ok(frame @ ClientFrame::Send { .. }) if !anonymous => {
                            match (claims.as_ref(), in_flight.clone().try_acquire_owned()) {
                                (Some(c), Ok(slot)) => send_direct(&state, c, frame, &me, slot),
                                _ => busy(&me, &frame),
                            }
                        }
                        Ok(frame) => match (&actor, in_flight.clone().try_acquire_owned()) {
                            (None, _) => {
                                me.push_json(&protocol::error(frame.r#ref(), "unauthorized", "an anonymous session has no inbox: connect with a token"));
                            }
                            (Some(actor), Ok(slot)) => match actor.try_send(ActorMsg::Command(Box::new(SessionCommand { session: me.id, frame, slot }))) {
                                Ok(()) => {}
                                Err(mpsc::error::TrySendError::Full(ActorMsg::Command(c))) => busy(&me, &c.frame),
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
                        if let Some(i) = pings.iter().position(|n| bytes.as_ref() == n.to_be_bytes()) {
                            last_pong = Instant::now();
                            pings.drain(..=i);
                        }
                    }
                    Ok(actix_ws::AggregatedMessage::Close(_)) => {
                        me.close_with(1000, "bye");
                        break;
                    }
                    Err(e) => {
                        let overflow = too_big.get() || matches!(e, actix_ws::ProtocolError::Overflow);
                        tracing::debug!(error = %e, "websocket protocol error");
                        if overflow {
                            me.close_with(close::TOO_BIG, "frame too large");
                        } else {
                            me.close_with(close::POLICY, "protocol error");
                        }
                        break;
                    }
                }
                if bad > MAX_BAD_FRAMES {
                    me.close_with(close::UNSUPPORTED, "too many bad frames");
                    break;
                }
            }
        }
    }
    state.topics.leave(me.id);
    // The actor must hear of every departure (presence, gauges); its mailbox is bounded, so wait
    // for room, but not forever.
    if let Some(actor) = actor {
        let leave = actor.send(ActorMsg::Leave { session: me.id });
        if tokio::time::timeout(Duration::from_secs(30), leave)
            .await
            .is_err()
        {
            tracing::warn!("a user actor did not take a session's departure in 30 s");
        }
    } else {
        metrics::gauge!("notifyd_ws_anonymous_connections").decrement(1.0);
    }
    drop(permit);
    // Keep the request stream (unread) until the connection is gone: dropped, actix-http would
    // read and discard whatever a client that was just closed keeps streaming; held, the
    // client meets TCP backpressure until the writer resets the connection.
    if let Some(conn) = conn {
        conn.wait_closed(liveness_window(heartbeat) * 3).await;
    }
    drop(stream);
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

/// `subscribe`: checked and registered here, answered (ack, then retained values) by a task
/// holding one of the session's command slots (it may wait on Redis and PostgreSQL).
fn subscribe(
    state: &AppState,
    me: &SessionTx,
    claims: Option<&UserClaims>,
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
    match state.topics.subscribe(me.id, &topics) {
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

/// A `send` frame: a direct message, created beside the reader (not through the user's actor,
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
/// command permits, so the reader never waits on the database.
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
