//! What a session does with each message its client sends, whatever transport carried it: the
//! WebSocket task (`session`) hands every text message to `Inbound::on_text`, and the SSE
//! transport's command endpoint will hand its own the same way. Commands are answered on the
//! session's outbound queue (`wire::outbound`); inbox commands go to the user's actor, at most
//! `MAX_COMMANDS_IN_FLIGHT` at a time per session; subscriptions go to the topic router; a
//! `publish` or a `send` runs beside the session, holding one of its command slots.
//!
//! Beside it, transport-neutral too: `lifetime` (liveness and the token's expiry, on one timer;
//! `Verdict::Renewed` gives it a new `exp`) and `Inbound::depart` (what a session's end tells
//! the topic router and the actor). What stays with the transport: reading and writing its
//! connection, and closing it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::mailbox::{ActorMsg, MailboxSender, SessionCommand, TrySendError};
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::inbox::create;
use crate::inbox::direct::{self, Via};
use crate::model::input::check_idempotency_key;
use crate::ratelimit::SessionRate;
use crate::state::AppState;
use crate::topics::router::Holder;
use crate::wire::outbound::SessionTx;
use crate::wire::protocol::{self, ClientFrame};

/// Commands (read, read_all, seen_all, subscribe, publish, send) one session may have in flight;
/// more are answered `busy`.
pub const MAX_COMMANDS_IN_FLIGHT: usize = 4;
/// Bad frames tolerated on one connection before it is closed as abusive.
const MAX_BAD_FRAMES: u32 = 20;
/// Token renewals one session may send: at most one per this interval, others get `busy`.
const AUTH_EVERY: Duration = Duration::from_secs(1);
/// How long a `publish` waits for one of the node's database command permits.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// A session's side of its client's messages: who it is, its command slots and its limits.
/// (Kept small and inline: every open socket's task holds one.)
pub struct Inbound {
    state: Arc<AppState>,
    /// The user's actor (the inbox); `None` for an anonymous viewer of public topics.
    actor: Option<MailboxSender>,
    /// The token's claims (`None`: anonymous), replaced by an in-band `auth`.
    claims: Option<UserClaims>,
    /// Made at the first command (most sessions never send one).
    in_flight: Option<Arc<Semaphore>>,
    last_auth: Option<Instant>,
    /// `subscribe`/`unsubscribe` frames of this session (8 bytes, inline).
    topic_rate: SessionRate,
    bad: u32,
}

/// What the transport must do after a message.
pub enum Verdict {
    Done,
    /// A fresh token was accepted: the session now expires at this `exp` (Unix seconds).
    Renewed(i64),
    /// The user's actor is gone: end the session.
    ActorGone,
}

impl Inbound {
    pub fn new(
        state: Arc<AppState>,
        actor: Option<MailboxSender>,
        claims: Option<UserClaims>,
    ) -> Self {
        Inbound {
            state,
            actor,
            claims,
            in_flight: None,
            last_auth: None,
            topic_rate: SessionRate::default(),
            bad: 0,
        }
    }

    /// The session is over, whatever ended it: it leaves its topics and its user's actor hears
    /// of it (presence, gauges), past the mailbox's bound (an actor that is gone needs no
    /// telling).
    pub fn depart(self, me: &SessionTx) {
        let session = me.id;
        self.state.topics.leave(session);
        match self.actor {
            Some(actor) => {
                let _ = actor.send_always(ActorMsg::Leave { session });
            }
            None => anonymous_gauge(me, -1.0),
        }
    }

    /// Whether the client has sent more bad frames than a session tolerates.
    pub fn too_many_bad_frames(&self) -> bool {
        self.bad > MAX_BAD_FRAMES
    }

    /// A binary message: refused (the protocol is JSON text), counted as a bad frame.
    pub fn on_binary(&mut self, me: &SessionTx) {
        self.bad += 1;
        bad_frame(
            me,
            &protocol::FrameError {
                r#ref: serde_json::Value::Null,
                code: "bad_frame",
                message: "binary frames are not supported; send JSON text".into(),
            },
        );
    }

    /// One text message from the client of session `me`, whose socket counts against
    /// `address` (the user, or an anonymous client's address).
    pub fn on_text(&mut self, me: &SessionTx, address: &str, text: &str) -> Verdict {
        let state = &self.state;
        let anonymous = self.claims.is_none();
        match protocol::parse(text) {
            Ok(ClientFrame::Ping { r#ref }) => {
                me.push_json(&protocol::pong(&r#ref));
            }
            Ok(ClientFrame::Auth { token, r#ref }) => {
                let now = Instant::now();
                let too_soon = self
                    .last_auth
                    .is_some_and(|t| now.duration_since(t) < AUTH_EVERY);
                match renew(state, self.claims.as_ref(), &token, too_soon) {
                    Ok(renewed) => {
                        self.last_auth = Some(now);
                        let exp = renewed.exp;
                        me.push_json(&protocol::ack(&r#ref, serde_json::json!({ "exp": exp })));
                        revoke_topics(state, me, &renewed);
                        self.claims = Some(renewed);
                        return Verdict::Renewed(exp);
                    }
                    Err((code, message)) => {
                        // A refused token counts like any bad frame (and so is limited).
                        self.bad += 1;
                        me.push_json(&protocol::error(&r#ref, code, message));
                    }
                }
            }
            Ok(ClientFrame::Subscribe { topics, r#ref }) => {
                if topic_command_allowed(state, me, &mut self.topic_rate, &r#ref) {
                    let slots = slots(&mut self.in_flight);
                    subscribe(
                        state,
                        me,
                        self.claims.as_ref(),
                        address,
                        slots,
                        topics,
                        r#ref,
                    );
                }
            }
            Ok(ClientFrame::Unsubscribe { topics, r#ref }) => {
                if topic_command_allowed(state, me, &mut self.topic_rate, &r#ref) {
                    state.topics.unsubscribe(me.id, &topics);
                    me.push_json(&protocol::ack(
                        &r#ref,
                        serde_json::json!({ "topics": topics }),
                    ));
                }
            }
            Ok(ClientFrame::Received { seq, .. }) => {
                // Nothing to answer; an anonymous session has no inbox to acknowledge.
                if let (Some(c), Some(push)) = (&self.claims, &state.push) {
                    push.receipts.note(&c.user, seq);
                }
            }
            Ok(ClientFrame::Publish { topic, data, r#ref }) => {
                let slots = slots(&mut self.in_flight);
                publish(state, me, self.claims.as_ref(), slots, topic, data, r#ref);
            }
            Ok(frame @ ClientFrame::Send { .. }) if !anonymous => {
                let slot = slots(&mut self.in_flight).clone().try_acquire_owned();
                match (self.claims.as_ref(), slot) {
                    (Some(c), Ok(slot)) => send_direct(state, c, frame, me, slot),
                    _ => busy(me, &frame),
                }
            }
            Ok(frame) => {
                let slot = slots(&mut self.in_flight).clone().try_acquire_owned();
                match (&self.actor, slot) {
                    (None, _) => {
                        me.push_json(&protocol::error(
                            frame.r#ref(),
                            "unauthorized",
                            "an anonymous session has no inbox: connect with a token",
                        ));
                    }
                    (Some(actor), Ok(slot)) => {
                        let command = SessionCommand {
                            session: me.id,
                            frame,
                            slot,
                        };
                        match actor.try_send(ActorMsg::Command(Box::new(command))) {
                            Ok(()) => {}
                            Err(TrySendError::Full(ActorMsg::Command(c))) => busy(me, &c.frame),
                            Err(_) => return Verdict::ActorGone,
                        }
                    }
                    (Some(_), Err(_)) => busy(me, &frame),
                }
            }
            Err(e) => {
                self.bad += 1;
                bad_frame(me, &e);
            }
        }
        Verdict::Done
    }
}

/// Anonymous sessions on this node, by transport (`depart` takes them off).
pub fn anonymous_gauge(me: &SessionTx, delta: f64) {
    metrics::gauge!("notifyd_ws_anonymous_connections", "transport" => me.transport.label())
        .increment(delta);
}

/// The session's command slots (`MAX_COMMANDS_IN_FLIGHT`), made when first needed.
fn slots(in_flight: &mut Option<Arc<Semaphore>>) -> &Arc<Semaphore> {
    in_flight.get_or_insert_with(|| Arc::new(Semaphore::new(MAX_COMMANDS_IN_FLIGHT)))
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
pub fn may_subscribe(state: &AppState, claims: Option<&UserClaims>, topic: &str) -> bool {
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
            let router = state.topics.clone();
            tokio::spawn(
                async move {
                    let _slot = slot;
                    router.finish(pending, Some(r#ref)).await;
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
                    let mut extra = serde_json::json!({"id": sent.id});
                    if sent.replayed {
                        extra["replayed"] = true.into();
                    }
                    // Only when the recipient muted the type (`id` is then null).
                    if let Some(skipped) = sent.skipped {
                        extra["skipped"] = skipped;
                    }
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
