//! One WebSocket connection: a writer task fed by a bounded queue (so a slow reader can never
//! block its user's actor or other sessions) and a reader task for client frames and liveness.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_ws::{CloseCode, CloseReason};
use tokio::sync::{mpsc, watch};

use super::protocol::{self, close, ClientFrame};
use super::user_actor::ActorMsg;

/// Frames queued for one session before it counts as a slow consumer and is closed with 4008.
pub const OUTBOUND_QUEUE: usize = 512;
/// Bad frames tolerated on one connection before it is closed as abusive.
const MAX_BAD_FRAMES: u32 = 20;

/// The actor's handle on a session.
#[derive(Clone)]
pub struct SessionTx {
    pub id: u64,
    pub frames: mpsc::Sender<Arc<str>>,
    pub close: watch::Sender<Option<(u16, &'static str)>>,
}

pub enum Push {
    Sent,
    /// Queue full (slow consumer) or gone: the caller drops the session.
    Dropped,
}

impl SessionTx {
    pub fn push(&self, frame: Arc<str>) -> Push {
        match self.frames.try_send(frame) {
            Ok(()) => Push::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("notifyd_slow_consumer_closed_total").increment(1);
                self.close_with(close::SLOW_CONSUMER, "slow consumer: resume with since");
                Push::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Push::Dropped,
        }
    }

    pub fn push_json(&self, v: &serde_json::Value) -> Push {
        self.push(Arc::from(v.to_string()))
    }

    pub fn close_with(&self, code: u16, reason: &'static str) {
        self.close.send_if_modified(|c| {
            if c.is_none() {
                *c = Some((code, reason));
                true
            } else {
                false
            }
        });
    }
}

/// Writes queued frames until closed. A close request interrupts even a write stuck on a slow
/// socket. The close frame queues behind what the socket already holds, so it waits up to
/// `close_grace` for a slow client to read that far (a client that resumes reading then sees
/// its 4008 and resumes with `since`); a client that never reads is dropped without it.
pub async fn writer(
    mut session: actix_ws::Session,
    mut frames: mpsc::Receiver<Arc<str>>,
    mut close_rx: watch::Receiver<Option<(u16, &'static str)>>,
    close_grace: Duration,
) {
    let reason = loop {
        if let Some(r) = *close_rx.borrow() {
            break Some(r);
        }
        tokio::select! {
            biased;
            _ = close_rx.changed() => continue,
            frame = frames.recv() => {
                let Some(frame) = frame else { break None };
                tokio::select! {
                    r = session.text(frame.as_ref().to_owned()) => if r.is_err() { break None },
                    _ = close_rx.changed() => continue,
                }
            }
        }
    };
    if let Some((code, text)) = reason {
        let close = CloseReason {
            code: CloseCode::from(code),
            description: Some(text.to_string()),
        };
        let _ = tokio::time::timeout(close_grace, session.close(Some(close))).await;
    }
}

/// How long a client may go without being heard before it counts as dead: two missed
/// heartbeats and half of the third.
pub fn liveness_window(heartbeat: Duration) -> Duration {
    heartbeat * 2 + heartbeat / 2
}

/// How long the writer waits for a closing session's last frames and close frame to drain: the
/// same time a live client has to answer a ping.
pub fn close_grace(heartbeat: Duration) -> Duration {
    liveness_window(heartbeat)
}

/// Reads client frames, answers pings, sends WebSocket pings every heartbeat and closes a
/// session that missed two. Commands go to the user's actor.
pub async fn reader(
    mut session: actix_ws::Session,
    stream: actix_ws::MessageStream,
    me: SessionTx,
    actor: mpsc::UnboundedSender<ActorMsg>,
    heartbeat: Duration,
) {
    let mut stream = stream
        .max_frame_size(protocol::MAX_CLIENT_FRAME)
        .aggregate_continuations()
        .max_continuation_size(protocol::MAX_CLIENT_FRAME);
    let mut close_rx = me.close.subscribe();
    let mut tick = tokio::time::interval(heartbeat);
    tick.tick().await;
    let mut last_heard = Instant::now();
    let mut bad = 0u32;
    loop {
        tokio::select! {
            _ = close_rx.changed() => break,
            _ = tick.tick() => {
                if last_heard.elapsed() > liveness_window(heartbeat) {
                    me.close_with(close::POLICY, "missed heartbeats");
                    break;
                }
                if session.ping(b"").await.is_err() {
                    break;
                }
            }
            msg = stream.recv() => {
                let Some(msg) = msg else { break };
                last_heard = Instant::now();
                match msg {
                    Ok(actix_ws::AggregatedMessage::Text(text)) => match protocol::parse(&text) {
                        Ok(ClientFrame::Ping { r#ref }) => {
                            me.push_json(&protocol::pong(&r#ref));
                        }
                        Ok(frame) => {
                            let _ = actor.send(ActorMsg::Command { session: me.id, frame });
                        }
                        Err(e) => {
                            bad += 1;
                            me.push_json(&protocol::error(&e.r#ref, e.code, &e.message));
                        }
                    },
                    Ok(actix_ws::AggregatedMessage::Binary(_)) => {
                        bad += 1;
                        me.push_json(&protocol::error(&serde_json::Value::Null, "bad_frame", "binary frames are not supported; send JSON text"));
                    }
                    Ok(actix_ws::AggregatedMessage::Ping(bytes)) => {
                        let _ = session.pong(&bytes).await;
                    }
                    Ok(actix_ws::AggregatedMessage::Pong(_)) => {}
                    Ok(actix_ws::AggregatedMessage::Close(_)) => {
                        me.close_with(1000, "bye");
                        break;
                    }
                    Err(e) => {
                        let code = if matches!(e, actix_ws::ProtocolError::Overflow) { close::TOO_BIG } else { close::POLICY };
                        tracing::debug!(error = %e, "websocket protocol error");
                        me.close_with(code, if code == close::TOO_BIG { "frame too large" } else { "protocol error" });
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
    let _ = actor.send(ActorMsg::Leave { session: me.id });
}
