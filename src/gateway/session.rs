//! One WebSocket connection's session task (`run`): it reads client frames (`ws_messages`,
//! handing each message to `inbound`, which is transport-neutral), answers pings, watches
//! liveness and the token's lifetime, and ends the connection. It writes nothing itself: every
//! outbound frame (events, replies, pings, pongs, the close) is queued on the session's
//! bounded queue (`wire::outbound`), which the response body (`ws_body`) encodes straight into
//! the connection as actix-http asks for more. A slow or silent client therefore never blocks
//! its user's actor, other sessions, or its own liveness check: what it does not read waits in
//! the queue under its bounds. (One task per socket: an idle node holds one of these each.)

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::conn::Conn;
use super::inbound::{Inbound, Verdict};
use super::lifetime::{close_grace, Lifetime, Tick};
use super::mailbox::MailboxSender;
use super::sockets::SocketPermit;
use super::ws_messages::{close_for, ClientMessage, ClientMessages};
use crate::auth::jwt::UserClaims;
use crate::ratelimit::SessionRate;
use crate::state::AppState;
use crate::wire::outbound::{CloseWith, SessionTx};
use crate::wire::protocol::close;

/// How long a client closed for its own behaviour has to take its close frame before the
/// connection is reset.
const SHORT_GRACE: Duration = Duration::from_secs(2);

/// Control frames (pings and pongs) a client may send at once, then per second (contract §7:
/// a flood from one socket never holds up other clients' requests). A normal client sends a
/// few per heartbeat: it answers each of our pings, and some libraries ping on their own.
///
/// Past the budget the session stops *reading* until the next one is due; it neither refuses
/// frames nor closes. What the client sends meanwhile waits in actix-http's buffers (a fixed
/// bound, `ws_messages`) and then in TCP: the flood meets back-pressure instead of this task's
/// CPU (two sockets answered at full speed took another client's `/healthz` p99 from 1.2 to
/// 54 ms), and the client loses nothing it sent. A client that keeps flooding falls behind its
/// own frames until its pong to our heartbeat ping is not read in time, and is closed with 1008
/// like any client that does not read. Closing at once instead would cut off a buggy but benign
/// ping loop, and would only make an attacker reconnect, and a handshake costs the node more
/// than a paused socket.
pub const CONTROL_FRAMES_BURST: u32 = 20;
pub const CONTROL_FRAMES_PER_SECOND: u32 = 10;

/// Makes sure a closing connection goes once its close frame is queued: the body writes it
/// behind what actix-http's write buffer already holds, so a slow client gets up to `grace` to
/// read that far (a client that resumes reading then sees its 4008 and resumes with `since`);
/// a connection still there after `grace` is reset.
pub async fn close_connection(code: u16, grace: Duration, conn: Option<Conn>) {
    metrics::counter!("notifyd_ws_closed_total", "code" => code.to_string()).increment(1);
    // A slow consumer gets the whole grace to read what it was sent, then the close frame;
    // a client closed for what it did (too large, expired, silent, abusive) only a moment.
    let grace = if code == close::SLOW_CONSUMER || code == close::GOING_AWAY_RESTART {
        grace
    } else {
        grace.min(SHORT_GRACE)
    };
    if let Some(conn) = conn {
        conn.drop_after(grace).await;
    }
}

/// Ends a connection whose session is over: makes sure it goes once its close frame (if any)
/// was asked for, and keeps `held`, the client's request stream, unread until the connection
/// is gone. Dropped at once, actix-http would read and discard whatever a client that was just
/// closed keeps streaming; held, the client meets TCP back-pressure until `close_connection`
/// resets the connection. For every session, and for one refused right after its upgrade (the
/// node is busy).
pub async fn close_holding<S>(
    held: S,
    reason: Option<CloseWith>,
    grace: Duration,
    conn: Option<Conn>,
) {
    if let Some((code, _)) = reason {
        close_connection(code, grace, conn.clone()).await;
    }
    if let Some(conn) = conn {
        conn.wait_closed(grace * 3).await;
    }
    drop(held);
}

/// What the session's task starts with. (Handed over boxed: an `async fn` keeps its arguments
/// beside the locals they are moved into, and this task is the one per socket.)
pub struct SessionCtx {
    /// The client's messages (the upgraded request's payload).
    pub stream: ClientMessages,
    /// Resolves once the response body is dropped: the connection is gone, or the stream
    /// ended after its close frame.
    pub body_gone: oneshot::Receiver<()>,
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
    pub conn: Option<Conn>,
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

/// Counts a control frame against the session's budget: when reading is to wait for the next
/// one to be due, until when.
fn control_frame(rate: &mut SessionRate) -> Option<Instant> {
    let wait = rate.pace(CONTROL_FRAMES_PER_SECOND, CONTROL_FRAMES_BURST);
    if wait.is_zero() {
        return None;
    }
    metrics::counter!("notifyd_rate_limited_total", "what" => "ws_control").increment(1);
    Some(Instant::now() + wait)
}

/// When the session's timer is to fire: at the lifetime's deadline, or sooner to resume reading.
fn wake_at(lifetime: &Lifetime, paused_until: Option<Instant>) -> Instant {
    paused_until.map_or(lifetime.deadline(), |at| at.min(lifetime.deadline()))
}

/// The session's one task: reads client frames, answers pings, sends a ping every heartbeat
/// and closes a session that has not answered for the liveness window or whose token expired.
/// What each client message does is `inbound`'s (the same for every transport). Whatever asks
/// for a close (this task, the actor, the router, a full queue) sets it on the queue: the body
/// writes the close frame, and this task stops reading and makes sure the connection goes.
pub async fn run(ctx: Box<SessionCtx>) {
    let SessionCtx {
        mut stream,
        mut body_gone,
        me,
        actor,
        joined,
        heartbeat,
        state,
        claims,
        permit,
        conn,
    } = *ctx;
    // Liveness and the token's expiry, on one timer (transport-neutral).
    let mut lifetime = Lifetime::new(heartbeat, claims.as_ref().map(|c| c.exp));
    let timer = tokio::time::sleep_until(lifetime.deadline());
    tokio::pin!(timer);
    let mut joined = Some(joined);
    let mut is_joined = false;
    // What the client's messages do, whatever carried them (transport-neutral).
    let mut inbound = Inbound::new(state, actor, claims);
    // The control-frame budget (`CONTROL_FRAMES_BURST`); while it is spent, reading waits
    // until `paused_until`. The one timer wakes the session for that or the lifetime.
    let mut control = SessionRate::default();
    let mut paused_until: Option<Instant> = None;
    loop {
        tokio::select! {
            biased;
            // The connection is gone (or the stream ended after a close).
            _ = &mut body_gone => break,
            // A close was asked for, by anyone: the body writes it.
            _ = me.close_asked() => break,
            r = wait_joined(&mut joined), if !is_joined => {
                joined = None; // frees the channel
                if r.is_err() {
                    break; // the actor could not take the session (it closed it)
                }
                is_joined = true;
            }
            _ = &mut timer => {
                let now = Instant::now();
                if paused_until.is_some_and(|at| now >= at) {
                    paused_until = None;
                }
                // Early for the lifetime when it woke to resume reading: `tick` then waits.
                match lifetime.tick(now) {
                    Tick::Wait => {}
                    Tick::Ping(nonce) => me.ping(nonce),
                    Tick::End((code, reason)) => {
                        me.close_with(code, reason);
                        break;
                    }
                }
                timer.as_mut().reset(wake_at(&lifetime, paused_until));
            }
            msg = stream.recv(), if is_joined && paused_until.is_none() => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(ClientMessage::Text(text)) => {
                        match inbound.on_text(&me, permit.key(), &text) {
                            Verdict::Done => {}
                            Verdict::Renewed(exp) => {
                                lifetime.renewed(exp);
                                timer.as_mut().reset(wake_at(&lifetime, paused_until));
                            }
                            Verdict::ActorGone => break,
                        }
                    }
                    Ok(ClientMessage::Binary(_)) => inbound.on_binary(&me),
                    Ok(ClientMessage::Ping(bytes)) => {
                        me.pong(&bytes);
                        paused_until = control_frame(&mut control);
                    }
                    Ok(ClientMessage::Pong(bytes)) => {
                        lifetime.answered(&bytes);
                        paused_until = control_frame(&mut control);
                    }
                    Ok(ClientMessage::Close) => {
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
                if paused_until.is_some() {
                    timer.as_mut().reset(wake_at(&lifetime, paused_until));
                }
                if inbound.too_many_bad_frames() {
                    me.close_with(close::UNSUPPORTED, "too many bad frames");
                    break;
                }
                // A burst the client wrote in one go is all buffered: `recv` answers at once,
                // message after message, and the answers go to the queue the response body
                // drains, on this same worker. Taking the burst in turns with the body (tokio's
                // budget: a yield every 128 messages) keeps the queue short; without it 600
                // pings in one write filled the queue's 512 places before the body ran, and a
                // client that reads at once was closed as a slow consumer.
                tokio::task::consume_budget().await;
            }
        }
    }
    let close = me.closing();
    // From now on nothing more is queued; the body still writes the close asked for (it comes
    // before anything queued), or ends without one.
    me.end();
    drop(body_gone);
    // Boxed: what only a closing session needs (timers) is not carried in every open
    // session's task.
    Box::pin(async move {
        let depart = async {
            inbound.depart(&me);
            drop(permit);
        };
        let closing = close_holding(stream, close, close_grace(heartbeat), conn);
        tokio::join!(depart, closing);
    })
    .await;
    tracing::info!("websocket session ended");
}
