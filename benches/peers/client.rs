//! The client side of every scenario: one WebSocket per user to notifyd, to the Socket.IO peer
//! (engine.io v4 framing over a plain WebSocket) or to NATS (its text protocol over WebSocket),
//! made ready the same way and read by the same loop, which answers each server's pings.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

/// Every wait for a connection or a frame is bounded by this.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Notifyd,
    SocketIo,
    Nats,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Notifyd => "notifyd",
            Kind::SocketIo => "socketio",
            Kind::Nats => "nats",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Notifyd => "notifyd",
            Kind::SocketIo => "Socket.IO",
            Kind::Nats => "NATS",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Notifyd, Kind::SocketIo, Kind::Nats]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// The topic name each server uses for the fan-out scenario (NATS subjects use dots).
    pub fn topic(self) -> &'static str {
        match self {
            Kind::Nats => "bench.1",
            _ => "bench:1",
        }
    }
}

/// Where a client connects, and the secret it signs user tokens with.
#[derive(Clone)]
pub struct Target {
    pub kind: Kind,
    pub ws: SocketAddr,
    pub secret: String,
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The integer after `key` in a frame's text: cheaper than parsing the JSON, which matters
/// because this client's CPU shares the cores with the servers it measures.
pub fn field(text: &str, key: &str) -> Option<u64> {
    // Servers may write `"t": 1` or `"t":1` (notifyd relays PostgreSQL's text form of jsonb).
    let rest = text[text.find(key)? + key.len()..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

async fn open_ws(src: Ipv4Addr, server: SocketAddr, path: &str) -> anyhow::Result<Ws> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::from((src, 0)))
        .with_context(|| format!("binding a client socket to {src}"))?;
    let stream = tokio::time::timeout(WAIT, sock.connect(server))
        .await
        .context("connect timed out")??;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("ws://{server}{path}"), stream),
    )
    .await
    .context("WebSocket handshake timed out")??;
    Ok(ws)
}

async fn send(ws: &mut Ws, kind: Kind, text: String) -> anyhow::Result<()> {
    // NATS reads its protocol from binary frames (text works too, binary is what its clients send).
    let m = match kind {
        Kind::Nats => Message::binary(text.into_bytes()),
        _ => Message::text(text),
    };
    tokio::time::timeout(WAIT, ws.send(m))
        .await
        .context("send timed out")??;
    Ok(())
}

/// The next data frame as text, or None once the socket closed. Socket.IO's `2` is answered
/// with `3` and NATS's `PING` with `PONG` here; WebSocket pings are answered by tungstenite.
pub async fn recv(ws: &mut Ws, kind: Kind) -> anyhow::Result<Option<String>> {
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Binary(b))) => String::from_utf8_lossy(&b).into_owned(),
            Some(Ok(Message::Close(_))) | None => return Ok(None),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("socket error: {e}"),
        };
        match kind {
            Kind::SocketIo if text == "2" => {
                send(ws, kind, "3".into()).await?;
                continue;
            }
            Kind::Nats if text.starts_with("PING\r\n") || text.contains("\r\nPING\r\n") => {
                send(ws, kind, "PONG\r\n".into()).await?;
            }
            _ => {}
        }
        return Ok(Some(text));
    }
}

/// Reads frames until one contains `needle`.
async fn wait_for(ws: &mut Ws, kind: Kind, needle: &str) -> anyhow::Result<String> {
    let read = async {
        loop {
            match recv(ws, kind).await? {
                Some(t) if t.contains(needle) => return Ok(t),
                Some(_) => continue,
                None => bail!("closed while waiting for {needle}"),
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .with_context(|| format!("no {needle} within {WAIT:?}"))?
}

/// One socket for `user`, ready to receive: notifyd has sent `hello` (and acked `subscribe`),
/// Socket.IO has answered `40` and sent `hello` (and acked), NATS has answered `PING` after the
/// `SUB` (its own subject per user, or the shared topic).
pub async fn connect(
    t: &Target,
    src: Ipv4Addr,
    user: &str,
    topic: Option<&str>,
) -> anyhow::Result<Ws> {
    let keys = notifyd::auth::jwt::JwtKeys::new(&t.secret);
    let grant: Vec<String> = topic.map(|_| "bench:*".to_string()).into_iter().collect();
    match t.kind {
        Kind::Notifyd => {
            let token = keys.mint(user, 3600, &grant)?;
            let path = format!("/ws?token={token}");
            let (mut ws, _) = crate::support::until_hello(|| open_ws(src, t.ws, &path)).await?;
            if let Some(topic) = topic {
                let sub = json!({"type": "subscribe", "topics": [topic], "ref": "s"});
                send(&mut ws, t.kind, sub.to_string()).await?;
                wait_for(&mut ws, t.kind, "\"ack\"").await?;
            }
            Ok(ws)
        }
        Kind::SocketIo => {
            let token = keys.mint(user, 3600, &grant)?;
            let path = format!("/socket.io/?EIO=4&transport=websocket&token={token}");
            let mut ws = open_ws(src, t.ws, &path).await?;
            wait_for(&mut ws, t.kind, "\"sid\"").await?; // engine.io open packet `0{...}`
            send(&mut ws, t.kind, "40".into()).await?;
            wait_for(&mut ws, t.kind, "\"hello\"").await?;
            if let Some(topic) = topic {
                let sub =
                    json!(["subscribe", {"type": "subscribe", "topics": [topic], "ref": "s"}]);
                send(&mut ws, t.kind, format!("42{sub}")).await?;
                wait_for(&mut ws, t.kind, "\"ack\"").await?;
            }
            Ok(ws)
        }
        Kind::Nats => {
            let mut ws = open_ws(src, t.ws, "/").await?;
            wait_for(&mut ws, t.kind, "INFO").await?;
            let subject = topic.map(str::to_string).unwrap_or(format!("user.{user}"));
            let hello = format!("CONNECT {{\"verbose\":false}}\r\nSUB {subject} 1\r\nPING\r\n");
            send(&mut ws, t.kind, hello).await?;
            wait_for(&mut ws, t.kind, "PONG").await?;
            Ok(ws)
        }
    }
}

/// Every event payload (`{"p":<phase>,"t":<µs>}`) in a frame: NATS may pack several `MSG`s into
/// one frame; notifyd and Socket.IO send one event per frame.
pub fn events(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.match_indices("\"p\":").filter_map(|(i, _)| {
        let rest = &text[i..];
        Some((field(rest, "\"p\":")?, field(rest, "\"t\":")?))
    })
}
