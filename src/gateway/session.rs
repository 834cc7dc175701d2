//! One WebSocket connection, one task (`run`): it writes every outbound frame (events, replies,
//! pings, pongs, the close) from the session's bounded queue (`wire::outbound`), and reads client
//! frames (handing each message to `inbound`, which is transport-neutral), watches liveness and
//! the token's lifetime. It never waits on the client for long: a
//! write the socket cannot take yet is kept while reading and the liveness check go on, so a
//! slow or silent client cannot block its user's actor, other sessions, or its own liveness
//! check. (One task, not a reader and a writer: an idle node holds one of these per socket.)

use std::sync::Arc;
use std::time::Duration;

use actix_ws::{CloseCode, CloseReason};
use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::conn::Conn;
use super::inbound::{Inbound, Verdict};
use super::lifetime::{close_grace, Lifetime, Tick};
use super::mailbox::MailboxSender;
use super::sockets::SocketPermit;
use crate::auth::jwt::UserClaims;
use crate::state::AppState;
use crate::wire::outbound::{CloseWith, Next, Out, SessionTx};
use crate::wire::protocol::{self, close};

/// How long a client closed for its own behaviour has to take its close frame before the
/// connection is reset.
const SHORT_GRACE: Duration = Duration::from_secs(2);

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

/// Ends a connection whose session is over: sends `reason`'s close frame (none when the
/// connection is already gone) and keeps `held`, the client's request stream, unread until the
/// connection is gone. Dropped at once, actix-http would read and discard whatever a client that
/// was just closed keeps streaming; held, the client meets TCP back-pressure until
/// `close_connection` resets the connection. For every session, and for one refused right
/// after its upgrade (the node is busy).
pub async fn close_holding<S>(
    ws: actix_ws::Session,
    held: S,
    reason: Option<CloseWith>,
    grace: Duration,
    conn: Option<Conn>,
) {
    if let Some(reason) = reason {
        close_connection(ws, reason, grace, conn.clone()).await;
    }
    if let Some(conn) = conn {
        conn.wait_closed(grace * 3).await;
    }
    drop(held);
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

/// The session's one task: writes what its queue holds, reads client frames, answers pings,
/// sends a ping every heartbeat and closes a session that has not answered for the liveness
/// window or whose token expired. What each client message does is `inbound`'s (the same for
/// every transport). A write waiting on a slow socket never holds up reading
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
        claims,
        permit,
        conn,
    } = *ctx;
    let mut stream = stream
        .max_frame_size(protocol::MAX_CLIENT_FRAME)
        .aggregate_continuations()
        .max_continuation_size(protocol::MAX_CLIENT_FRAME)
        .max_continuation_frames(protocol::MAX_CLIENT_FRAGMENTS);
    // Liveness and the token's expiry, on one timer (transport-neutral).
    let mut lifetime = Lifetime::new(heartbeat, claims.as_ref().map(|c| c.exp));
    let timer = tokio::time::sleep_until(lifetime.deadline());
    tokio::pin!(timer);
    let mut joined = Some(joined);
    let mut is_joined = false;
    // What the client's messages do, whatever carried them (transport-neutral).
    let mut inbound = Inbound::new(state, actor, claims);
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
                if r.is_err() {
                    break; // the actor could not take the session (it closed it)
                }
                is_joined = true;
            }
            _ = &mut timer => {
                match lifetime.tick(Instant::now()) {
                    Tick::Wait => {}
                    Tick::Ping(nonce) => me.ping(nonce),
                    Tick::End((code, reason)) => {
                        me.close_with(code, reason);
                        break;
                    }
                }
                timer.as_mut().reset(lifetime.deadline());
            }
            msg = stream.recv(), if is_joined => {
                let Some(msg) = msg else { break };
                match msg {
                    Ok(actix_ws::AggregatedMessage::Text(text)) => {
                        match inbound.on_text(&me, permit.key(), &text) {
                            Verdict::Done => {}
                            Verdict::Renewed(exp) => {
                                lifetime.renewed(exp);
                                timer.as_mut().reset(lifetime.deadline());
                            }
                            Verdict::ActorGone => break,
                        }
                    }
                    Ok(actix_ws::AggregatedMessage::Binary(_)) => inbound.on_binary(&me),
                    Ok(actix_ws::AggregatedMessage::Ping(bytes)) => me.pong(&bytes),
                    Ok(actix_ws::AggregatedMessage::Pong(bytes)) => lifetime.answered(&bytes),
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
                if inbound.too_many_bad_frames() {
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
            inbound.depart(&me);
            drop(permit);
        };
        let closing = close_holding(ws, stream, close, close_grace(heartbeat), conn);
        tokio::join!(depart, closing);
    })
    .await;
    tracing::info!("websocket session ended");
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
