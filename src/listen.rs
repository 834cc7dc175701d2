//! `notifyd listen`: a terminal client for non-browser consumers (desktop agents, scripts). Prints
//! every event as one JSON line on stdout, and like the browser client it reconnects with
//! exponential back-off (full jitter) and resumes with `since`, dropping duplicates by seq.
//!
//! Token lifetime (contract §7): the server closes a socket with 4001 when its token's `exp`
//! passes. With `--token-cmd` the listener runs the command before `exp` and sends the new token
//! in-band (`auth`); if the server refuses it, or closes with 4001 anyway, or refuses the
//! handshake with 401, it runs the command again and reconnects at once.
//!
//! Topics (contract §8): with `topics`, every connection subscribes to them after its `hello`,
//! and topic events are printed like inbox events, each id once per topic. Without the inbox
//! (`inbox: false`) only topic events are printed, and without a token the connection is
//! anonymous (servers with `NOTIFYD_PUBLIC_TOPICS` accept it).

mod token;
mod topics;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

pub use token::{
    refresh_delay, run_token_cmd, token_exp, Token, TokenSource, MAX_TOKEN_BYTES, TOKEN_CMD_TIMEOUT,
};
pub use topics::{topic_list, RECENT_IDS_PER_TOPIC};
use topics::{Seen, Subscribing};

const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// TCP connect + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One outbound frame (a pong, an `auth`): a peer that does not take it by then is gone.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence allowed before `hello` arrives (it is the server's first frame).
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The server pings every `heartbeat_s`; this many heartbeats of silence means it is gone.
const SILENT_HEARTBEATS: f64 = 2.5;
/// An `auth` not answered by then: the refresh failed.
const AUTH_REPLY_TIMEOUT: Duration = Duration::from_secs(15);
/// An `auth` answered `busy` (too many commands in flight) is sent again this many times.
const BUSY_RETRIES: u32 = 3;
const BUSY_RETRY_BASE: Duration = Duration::from_millis(200);
/// Two no-back-off reconnects closer than this: the second one backs off (no spinning on a
/// token command that keeps printing nearly expired tokens).
const IMMEDIATE_RETRY_GAP: Duration = Duration::from_secs(1);
/// The server's close code for an expired token.
const CLOSE_TOKEN_EXPIRED: u16 = 4001;

pub struct Listener {
    /// `ws://host:port/ws`. The token goes in the `Authorization` header, never in the URL
    /// (URLs end up in proxy logs).
    pub url: String,
    /// None: an anonymous connection (no `Authorization` header), for public topics only.
    pub token: Option<TokenSource>,
    /// The last seq already applied; events at or below it are not printed.
    pub since: Option<i64>,
    /// Subscribed after every `hello` (see `topic_list`).
    pub topics: Vec<String>,
    /// Print the user's own events (`message.*`, `sync`); false: topic events only.
    pub inbox: bool,
}

/// What the listener reports to its caller: event lines for stdout, status lines for stderr.
pub enum Output<'a> {
    Event(&'a Value),
    Status(String),
}

/// Why a connection ended, which decides how soon the next attempt starts.
enum End {
    /// Network trouble, a server close, a refused handshake other than 401: back-off.
    Dropped,
    /// Closed with 4001, or the in-band refresh was refused: a new token, at once.
    TokenRejected,
    /// Closed with 1013 naming a `retry_after` (a busy node): come back after it, not sooner.
    RetryAfter(Duration),
    /// The handshake answered 401.
    Unauthorized,
    /// Cannot work (a bad URL; no topic allowed and no inbox): give up, saying why.
    Fatal(String),
}

/// What outlives a connection: the inbox position, the topic ids printed, the back-off.
struct Progress<'a> {
    last: &'a mut Option<i64>,
    seen: &'a mut Seen,
    attempt: &'a mut u32,
}

type TokenRun = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// An `auth` frame sent and not yet answered.
struct PendingAuth {
    token: Token,
    reference: String,
    deadline: Instant,
    busy_retries: u32,
    /// Set after a `busy` answer: when to send it again.
    resend_at: Option<Instant>,
}

/// Per-connection token state.
struct Session {
    /// The token the server holds for this socket (None: anonymous).
    current: Option<Token>,
    refresh_at: Option<Instant>,
    /// The token command, running for a refresh (dropped, and so killed, with the session).
    running: Option<TokenRun>,
    pending: Option<PendingAuth>,
    next_ref: u64,
}

impl Session {
    /// Arms the refresh before the current token's exp (nothing without an `exp`).
    fn schedule_refresh(&mut self) {
        self.refresh_at = self.current.as_ref().and_then(|t| t.exp).and_then(|exp| {
            let now_ms = chrono::Utc::now().timestamp_millis();
            refresh_delay(exp, now_ms, rand::rng().random::<f64>()).map(|d| Instant::now() + d)
        });
    }

    fn auth_frame(&self) -> Option<String> {
        let p = self.pending.as_ref()?;
        Some(json!({"type": "auth", "token": p.token.value, "ref": p.reference}).to_string())
    }
}

impl Listener {
    fn request(
        &self,
        token: Option<&str>,
        since: Option<i64>,
    ) -> Result<tungstenite::handshake::client::Request, String> {
        use tungstenite::client::IntoClientRequest;
        let mut url = self.url.clone();
        if let Some(s) = since {
            url.push(if url.contains('?') { '&' } else { '?' });
            url.push_str(&format!("since={s}"));
        }
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| e.to_string())?;
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| "the token cannot be sent in an HTTP header".to_string())?;
            request.headers_mut().insert("authorization", value);
        }
        Ok(request)
    }

    fn renewable(&self) -> bool {
        self.token.as_ref().is_some_and(TokenSource::renewable)
    }

    /// Runs until the task is dropped, calling `out` for every event and status change, or until
    /// it cannot work at all: then it returns why.
    pub async fn run(&self, mut out: impl FnMut(Output<'_>)) -> String {
        let mut last = if self.inbox { self.since } else { None };
        let mut seen = Seen::new(&self.topics);
        let mut attempt: u32 = 0;
        let mut cached: Option<Token> = None;
        let mut last_immediate: Option<Instant> = None;
        let mut retry_after: Option<Duration> = None;
        loop {
            let token = match &self.token {
                None => Ok(None),
                Some(source) => source.get(cached.as_ref()).await.map(Some),
            };
            let immediate = match token {
                Err(e) => {
                    out(Output::Status(e));
                    false
                }
                Ok(token) => {
                    cached = token.clone();
                    out(Output::Status(format!("connecting (since={last:?})")));
                    let progress = Progress {
                        last: &mut last,
                        seen: &mut seen,
                        attempt: &mut attempt,
                    };
                    let end = self
                        .connection(token.as_ref(), &mut cached, progress, &mut out)
                        .await;
                    match end {
                        End::Fatal(why) => return why,
                        End::Dropped => false,
                        End::RetryAfter(d) => {
                            retry_after = Some(d);
                            false
                        }
                        End::TokenRejected => {
                            cached = None;
                            true
                        }
                        End::Unauthorized => {
                            cached = None;
                            out(Output::Status(match &self.token {
                                None => "the server refused an anonymous connection (it takes them only with NOTIFYD_PUBLIC_TOPICS set)".into(),
                                Some(TokenSource::Fixed(_)) => "the token was refused; --token-cmd lets the listener get new ones".into(),
                                Some(TokenSource::Command(_)) => "the token was refused".into(),
                            }));
                            // A token from the cache may simply have expired: get a new one
                            // now. A fresh one refused means the command's tokens are no good.
                            self.renewable() && token.is_some_and(|t| !t.fresh)
                        }
                    }
                }
            };
            if immediate && last_immediate.is_none_or(|t| t.elapsed() >= IMMEDIATE_RETRY_GAP) {
                last_immediate = Some(Instant::now());
                out(Output::Status(
                    "reconnecting at once with a new token".into(),
                ));
                continue;
            }
            attempt = attempt.saturating_add(1);
            if let Some(delay) = retry_after.take() {
                out(Output::Status(format!(
                    "server busy: reconnecting in {delay:?}"
                )));
                tokio::time::sleep(delay).await;
                continue;
            }
            let delay = backoff(attempt);
            out(Output::Status(format!("reconnecting in {delay:?}")));
            tokio::time::sleep(delay).await;
        }
    }

    /// One connection, from the handshake to its end: whichever comes first of a frame from
    /// the server, a subscribe to resend, a token refresh due, the token command's answer, and
    /// an `auth` to resend or given up on, each handled by its own step below.
    async fn connection(
        &self,
        token: Option<&Token>,
        cached: &mut Option<Token>,
        progress: Progress<'_>,
        out: &mut impl FnMut(Output<'_>),
    ) -> End {
        let mut ws = match self
            .open(token.map(|t| t.value.as_str()), *progress.last, out)
            .await
        {
            Ok(ws) => ws,
            Err(end) => return end,
        };
        let mut c = Open {
            s: Session {
                current: token.cloned(),
                refresh_at: None,
                running: None,
                pending: None,
                next_ref: 0,
            },
            subscribing: None,
            silence: FIRST_FRAME_TIMEOUT,
            progress,
            cached,
        };
        loop {
            let auth_timer =
                c.s.pending
                    .as_ref()
                    .map(|p| p.resend_at.unwrap_or(p.deadline));
            let end = tokio::select! {
                msg = tokio::time::timeout(c.silence, ws.next()) => {
                    match read(msg, c.silence, &mut ws, out).await {
                        Read::Text(text) => self.on_frame(&text, &mut c, &mut ws, out).await,
                        Read::Nothing => None,
                        Read::End(end) => Some(end),
                    }
                }
                _ = until(c.subscribing.as_ref().and_then(Subscribing::timer)) => {
                    on_subscribe_timer(c.subscribing.as_mut(), &mut ws, out).await
                }
                _ = until(c.s.refresh_at) => {
                    self.start_refresh(&mut c.s);
                    None
                }
                result = maybe(c.s.running.as_mut()) => {
                    c.s.running = None;
                    on_token_cmd(result, &mut c.s, &mut ws, out).await
                }
                _ = until(auth_timer) => on_auth_timer(&mut c.s, &mut ws, out).await,
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// The handshake: the socket, or how the attempt ended (a refusal's HTTP status decides
    /// between a new token and the back-off).
    async fn open(
        &self,
        token: Option<&str>,
        since: Option<i64>,
        out: &mut impl FnMut(Output<'_>),
    ) -> Result<Ws, End> {
        let request = self
            .request(token, since)
            .map_err(|e| End::Fatal(format!("bad url or token: {e}")))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await
        {
            Err(_) => {
                out(Output::Status(format!(
                    "connect timed out after {CONNECT_TIMEOUT:?}"
                )));
                Err(End::Dropped)
            }
            Ok(Err(tungstenite::Error::Http(resp))) => {
                out(Output::Status(format!(
                    "handshake refused: HTTP {}",
                    resp.status()
                )));
                // 429 (too many sockets for this user) and 5xx: try again after the back-off.
                Err(if resp.status().as_u16() == 401 {
                    End::Unauthorized
                } else {
                    End::Dropped
                })
            }
            Ok(Err(e)) => {
                out(Output::Status(format!("connect failed: {e}")));
                Err(End::Dropped)
            }
            Ok(Ok((ws, _))) => Ok(ws),
        }
    }

    /// One JSON text frame from the server: what it means for the connection.
    async fn on_frame(
        &self,
        text: &str,
        c: &mut Open<'_, '_>,
        ws: &mut Ws,
        out: &mut impl FnMut(Output<'_>),
    ) -> Option<End> {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            return None;
        };
        let last = &mut *c.progress.last;
        match frame["type"].as_str() {
            Some("hello") => return self.on_hello(&frame, text, c, ws, out).await,
            Some("topic.event") => {
                if c.progress.seen.first_time(&frame) {
                    out(Output::Event(&frame));
                }
            }
            Some("ack") | Some("error") if is_reply_to(&frame, c.s.pending.as_ref()) => {
                return on_auth_reply(&frame, &mut c.s, c.cached, out);
            }
            Some("ack") | Some("error")
                if c.subscribing
                    .as_ref()
                    .is_some_and(|sub| sub.is_reply(&frame)) =>
            {
                let sub = c.subscribing.as_mut()?;
                match sub.on_reply(&frame) {
                    Err(e) => {
                        out(Output::Status(e));
                        return Some(End::Dropped);
                    }
                    Ok(line) if line.is_empty() => {}
                    Ok(line) => out(Output::Status(line)),
                }
                return self.subscribe_next(sub, &mut c.s.next_ref, ws, out).await;
            }
            // Not an answer to anything awaited: e.g. topics a renewed token no
            // longer allows (contract §7).
            Some("error") => out(Output::Status(format!(
                "server error: {}: {}",
                frame["error"]["code"].as_str().unwrap_or("error"),
                frame["error"]["message"].as_str().unwrap_or("")
            ))),
            Some("pong") | Some("ack") => {}
            _ if !self.inbox => {}
            Some("sync") if frame["reset"] == true => {
                out(Output::Event(&frame));
                *last = frame["seq"].as_i64();
            }
            Some("sync") => {
                for ev in frame["events"].as_array().into_iter().flatten() {
                    apply(ev, last, out);
                }
            }
            _ => apply(&frame, last, out),
        }
        None
    }

    /// `hello`: the connection is up. The back-off starts over, the silence allowed follows
    /// the server's heartbeat, the token refresh is armed and the topics are subscribed.
    async fn on_hello(
        &self,
        frame: &Value,
        text: &str,
        c: &mut Open<'_, '_>,
        ws: &mut Ws,
        out: &mut impl FnMut(Output<'_>),
    ) -> Option<End> {
        *c.progress.attempt = 0;
        out(Output::Status(format!("connected: {text}")));
        // A fresh start (no since) begins at the current seq.
        if c.progress.last.is_none() && self.inbox {
            *c.progress.last = frame["seq"].as_i64();
        }
        if let Some(hb) = frame["heartbeat_s"].as_f64().filter(|h| *h > 0.0) {
            c.silence = Duration::from_secs_f64((hb * SILENT_HEARTBEATS).clamp(5.0, 600.0));
        }
        if self.renewable() {
            c.s.schedule_refresh();
        }
        let mut sub = Subscribing::new(&self.topics);
        if let Some(end) = self
            .subscribe_next(&mut sub, &mut c.s.next_ref, ws, out)
            .await
        {
            return Some(end);
        }
        c.subscribing = Some(sub);
        None
    }

    /// The refresh is due: run the token command (its answer: `on_token_cmd`).
    fn start_refresh(&self, s: &mut Session) {
        s.refresh_at = None;
        if let Some(TokenSource::Command(cmd)) = &self.token {
            let cmd = cmd.clone();
            s.running = Some(Box::pin(async move {
                run_token_cmd(&cmd, TOKEN_CMD_TIMEOUT).await
            }));
        }
    }
}

/// The socket of one connection.
type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What one connection holds between its frames.
struct Open<'p, 'c> {
    s: Session,
    /// Started by `hello`.
    subscribing: Option<Subscribing>,
    /// Silence allowed before the server is presumed gone.
    silence: Duration,
    progress: Progress<'p>,
    cached: &'c mut Option<Token>,
}

/// What reading the socket gave.
enum Read {
    Text(tungstenite::Utf8Bytes),
    /// A control frame (answered here) or a frame the listener ignores.
    Nothing,
    End(End),
}

/// One message read within the allowed silence: a ping is answered, a close or an error ends
/// the connection.
async fn read(
    msg: Result<Option<Result<Message, tungstenite::Error>>, tokio::time::error::Elapsed>,
    silence: Duration,
    ws: &mut Ws,
    out: &mut impl FnMut(Output<'_>),
) -> Read {
    let msg = match msg {
        Err(_) => {
            out(Output::Status(format!(
                "nothing heard for {silence:?}: connection presumed dead"
            )));
            return Read::End(End::Dropped);
        }
        Ok(None) => {
            out(Output::Status("connection closed".into()));
            return Read::End(End::Dropped);
        }
        Ok(Some(m)) => m,
    };
    match msg {
        Ok(Message::Text(t)) => Read::Text(t),
        Ok(Message::Ping(p)) => {
            if !send(ws, Message::Pong(p)).await {
                out(Output::Status("could not answer a ping".into()));
                return Read::End(End::Dropped);
            }
            Read::Nothing
        }
        Ok(Message::Close(c)) => {
            let (code, reason) = c
                .map(|c| (Some(u16::from(c.code)), c.reason.to_string()))
                .unwrap_or((None, String::new()));
            out(Output::Status(format!(
                "closed by server: {code:?} {reason:?}"
            )));
            Read::End(end_of_close(code, &reason))
        }
        Ok(_) => Read::Nothing,
        Err(e) => {
            out(Output::Status(format!("connection error: {e}")));
            Read::End(End::Dropped)
        }
    }
}

/// A subscribe not answered in time: send it again, or give up on the connection.
async fn on_subscribe_timer(
    sub: Option<&mut Subscribing>,
    ws: &mut Ws,
    out: &mut impl FnMut(Output<'_>),
) -> Option<End> {
    match sub?.on_timer() {
        Err(e) => {
            out(Output::Status(e));
            Some(End::Dropped)
        }
        Ok(Some(frame)) => {
            if !send(ws, Message::text(frame)).await {
                out(Output::Status("could not send subscribe".into()));
                return Some(End::Dropped);
            }
            None
        }
        Ok(None) => None,
    }
}

/// The token command's answer: a newer token is sent in-band (`auth`); a failure or a token
/// no newer than the current one is asked for again later.
async fn on_token_cmd(
    result: Result<String, String>,
    s: &mut Session,
    ws: &mut Ws,
    out: &mut impl FnMut(Output<'_>),
) -> Option<End> {
    let value = match result {
        Err(e) => {
            out(Output::Status(format!("refresh: {e}")));
            // Try again before exp; if it passes first, the 4001 reconnect
            // runs the command again (with back-off if it keeps failing).
            s.schedule_refresh();
            return None;
        }
        Ok(value) => value,
    };
    let new = Token::new(value, true);
    if new.exp.is_some() && new.exp <= s.current.as_ref().and_then(|t| t.exp) {
        out(Output::Status(
            "refresh: the token command printed no newer token; asking again later".into(),
        ));
        s.schedule_refresh();
        return None;
    }
    s.next_ref += 1;
    s.pending = Some(PendingAuth {
        token: new,
        reference: format!("a{}", s.next_ref),
        deadline: Instant::now() + AUTH_REPLY_TIMEOUT,
        busy_retries: 0,
        resend_at: None,
    });
    send_auth(s.auth_frame(), ws, out).await
}

/// The pending `auth`'s timer: resend it after a `busy`, or give up on it unanswered.
async fn on_auth_timer(
    s: &mut Session,
    ws: &mut Ws,
    out: &mut impl FnMut(Output<'_>),
) -> Option<End> {
    let p = s.pending.as_mut()?;
    if p.resend_at.take().is_some() {
        p.deadline = Instant::now() + AUTH_REPLY_TIMEOUT;
        return send_auth(s.auth_frame(), ws, out).await;
    }
    out(Output::Status(format!(
        "refresh: no answer to auth within {AUTH_REPLY_TIMEOUT:?}"
    )));
    Some(End::TokenRejected)
}

/// Sends the pending `auth` (`frame`: `Session::auth_frame`, built before the await: a
/// `Session` holds the token command's future, which is not `Sync`).
async fn send_auth(
    frame: Option<String>,
    ws: &mut Ws,
    out: &mut impl FnMut(Output<'_>),
) -> Option<End> {
    let frame = frame?;
    if !send(ws, Message::text(frame)).await {
        out(Output::Status("could not send auth".into()));
        return Some(End::Dropped);
    }
    None
}

impl Listener {
    /// Sends the next subscribe frame, if any. Once every topic has been answered: with no inbox
    /// and no topic allowed there is nothing to listen to, so the listener gives up.
    async fn subscribe_next<S>(
        &self,
        sub: &mut Subscribing,
        next_ref: &mut u64,
        ws: &mut S,
        out: &mut impl FnMut(Output<'_>),
    ) -> Option<End>
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        if let Some(frame) = sub.next_frame(next_ref) {
            if !send(ws, Message::text(frame)).await {
                out(Output::Status("could not send subscribe".into()));
                return Some(End::Dropped);
            }
            return None;
        }
        (sub.done() && !self.inbox && sub.accepted == 0).then(|| {
            End::Fatal(format!(
                "none of the topics could be subscribed ({} refused) and --no-inbox was given: nothing to listen to",
                sub.refused
            ))
        })
    }
}

fn is_reply_to(frame: &Value, pending: Option<&PendingAuth>) -> bool {
    pending.is_some_and(|p| frame["ref"].as_str() == Some(p.reference.as_str()))
}

/// The server's answer to our `auth`: adopt the token, retry after `busy`, or give up on the
/// socket (it would be closed at the old exp anyway).
fn on_auth_reply(
    frame: &Value,
    s: &mut Session,
    cached: &mut Option<Token>,
    out: &mut impl FnMut(Output<'_>),
) -> Option<End> {
    let p = s.pending.as_mut()?;
    if frame["type"] == "error" {
        let code = frame["error"]["code"].as_str().unwrap_or("error");
        if code == "busy" && p.busy_retries < BUSY_RETRIES {
            let wait = BUSY_RETRY_BASE * 2u32.pow(p.busy_retries);
            p.busy_retries += 1;
            p.resend_at = Some(Instant::now() + wait);
            return None;
        }
        out(Output::Status(format!(
            "refresh refused: {code}: {}",
            frame["error"]["message"].as_str().unwrap_or("")
        )));
        return Some(End::TokenRejected);
    }
    let pending = s.pending.take()?;
    let mut token = pending.token;
    if let Some(exp) = frame["exp"].as_i64() {
        token.exp = Some(exp);
    }
    out(Output::Status(format!(
        "token refreshed (exp={:?})",
        token.exp
    )));
    *cached = Some(token.clone());
    s.current = Some(token);
    s.schedule_refresh();
    None
}

/// Sends one frame, giving up after SEND_TIMEOUT.
async fn send<S>(ws: &mut S, m: Message) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, ws.send(m)).await,
        Ok(Ok(()))
    )
}

async fn until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn maybe<F: Future + Unpin>(f: Option<&mut F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

fn apply(ev: &Value, last: &mut Option<i64>, out: &mut impl FnMut(Output<'_>)) {
    match ev["seq"].as_i64() {
        Some(seq) if last.is_some_and(|l| seq <= l) => {} // duplicate
        Some(seq) => {
            *last = Some(seq);
            out(Output::Event(ev));
        }
        None => out(Output::Event(ev)), // topic events have no seq
    }
}

/// Full jitter: a uniform delay in [0, min(cap, base * 2^attempt)). The first retry is quick.
/// The longest `retry_after` honoured (a bad value must not park the listener for hours).
const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// What a server close means for the next attempt: 4001 a new token at once, 1013 with
/// `retry_after=<ms>` that wait, anything else the backoff.
fn end_of_close(code: Option<u16>, reason: &str) -> End {
    match code {
        Some(CLOSE_TOKEN_EXPIRED) => End::TokenRejected,
        Some(crate::wire::protocol::close::TRY_AGAIN_LATER) => {
            match crate::wire::protocol::retry_after_ms(reason) {
                Some(ms) => End::RetryAfter(Duration::from_millis(ms).min(RETRY_AFTER_MAX)),
                None => End::Dropped,
            }
        }
        _ => End::Dropped,
    }
}

fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    Duration::from_millis(rand::rng().random_range(0..=ceiling.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_close_names_the_wait() {
        let wait = |code, reason| match end_of_close(Some(code), reason) {
            End::RetryAfter(d) => Some(d),
            _ => None,
        };
        assert_eq!(
            wait(1013, "server busy: retry_after=2750"),
            Some(Duration::from_millis(2750))
        );
        assert_eq!(
            wait(1013, "server busy: retry_after=9999999"),
            Some(RETRY_AFTER_MAX)
        );
        assert_eq!(wait(1013, "server busy: retry"), None);
        assert_eq!(wait(1006, "retry_after=10"), None);
        assert!(matches!(end_of_close(Some(4001), ""), End::TokenRejected));
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            assert!(backoff(attempt) <= BACKOFF_CAP);
        }
    }

    #[test]
    fn the_token_goes_in_the_header_not_the_url() {
        let l = Listener {
            url: "ws://h/ws".into(),
            token: Some(TokenSource::Fixed("t".into())),
            since: None,
            topics: vec![],
            inbox: true,
        };
        let r = l.request(Some("t"), None).expect("request");
        assert_eq!(r.uri().to_string(), "ws://h/ws");
        assert_eq!(r.headers()["authorization"], "Bearer t");
        let r = l.request(Some("t"), Some(5)).expect("request");
        assert_eq!(r.uri().to_string(), "ws://h/ws?since=5");
        assert!(l.request(Some("bad\ntoken"), None).is_err());
        let r = l.request(None, None).expect("request");
        assert!(r.headers().get("authorization").is_none());
    }
}
