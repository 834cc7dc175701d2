//! `WsClient`, a WebSocket client that records what it reads, and the handshake helpers around
//! it (refusals, extra headers, a small receive buffer).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::app::TestApp;
use super::tokens::token;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client that records every frame it reads.
pub struct WsClient {
    pub ws: WsStream,
    pub frames: Vec<Value>,
    pub closed: Option<(u16, String)>,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(WsClient {
            ws,
            frames: vec![],
            closed: None,
        })
    }

    /// The next JSON frame, or `None` on close/timeout.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match msg {
                Ok(WsMessage::Text(t)) => {
                    let v: Value = serde_json::from_str(&t).expect("server sent JSON");
                    self.frames.push(v.clone());
                    return Some(v);
                }
                Ok(WsMessage::Close(c)) => {
                    self.closed = Some(
                        c.map(|c| (u16::from(c.code), c.reason.to_string()))
                            .unwrap_or((1005, String::new())),
                    );
                    return None;
                }
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame of type `ty`, skipping others; panics after `timeout`.
    pub async fn expect(&mut self, ty: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if f["type"] == ty => return f,
                Some(_) => continue,
                None => panic!(
                    "no {ty} frame within {timeout:?}; closed={:?}; saw {:?}",
                    self.closed,
                    self.frames
                        .iter()
                        .map(|f| f["type"].clone())
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Reads until the socket closes (or `timeout`); returns the close code.
    pub async fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if self.next(left).await.is_none() && self.closed.is_none() {
                break;
            }
        }
        self.closed.as_ref().map(|c| c.0)
    }

    pub async fn send(&mut self, v: &Value) {
        self.ws
            .send(WsMessage::text(v.to_string()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        let _ = self.ws.send(m).await;
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The events of a resume, up to seq `last`: a long resume comes in several `sync` frames,
    /// and what did not fit the socket's budget follows as live frames. Panics on a reset, a
    /// close or `timeout`.
    pub async fn resumed_events(&mut self, last: i64, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events: Vec<Value> = vec![];
        while events.last().and_then(|e| e["seq"].as_i64()) != Some(last) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(f) = self.next(left).await else {
                panic!(
                    "resume ended after {} events: closed={:?}",
                    events.len(),
                    self.closed
                );
            };
            match f["type"].as_str() {
                Some("sync") => {
                    assert_eq!(f.get("reset"), None, "a reset instead of events");
                    events.extend(f["events"].as_array().expect("events").iter().cloned());
                }
                _ if f.get("seq").is_some() => events.push(f),
                _ => {}
            }
        }
        events
    }

    /// The very next frame, which must be of type `ty` (panics on anything else, a close or
    /// `timeout`).
    pub async fn next_of(&mut self, ty: &str, timeout: Duration) -> Value {
        match self.next(timeout).await {
            Some(f) if f["type"] == ty => f,
            Some(f) => panic!("expected a {ty} frame next, got {f}"),
            None => panic!(
                "expected a {ty} frame next; none within {timeout:?}, closed={:?}",
                self.closed
            ),
        }
    }

    /// The answer to `ref` (an `ack` or `error` echoing it), skipping any other frame; panics
    /// with what arrived if none comes within `timeout`.
    pub async fn answer_to(&mut self, r#ref: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await {
                Some(f) if f["ref"] == r#ref => return f,
                Some(_) => continue,
                None => panic!(
                    "no answer to {ref} within {timeout:?}; closed={:?}",
                    self.closed
                ),
            }
        }
    }

    /// The next `types.len()` frames, which must be exactly one of each type in any order;
    /// returned in the order of `types`.
    pub async fn next_set(&mut self, types: &[&str], timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got: Vec<Option<Value>> = vec![None; types.len()];
        for _ in 0..types.len() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.next(left).await.unwrap_or_else(|| {
                panic!(
                    "expected frames {types:?}; got only {got:?}, closed={:?}",
                    self.closed
                )
            });
            let i = types
                .iter()
                .position(|t| f["type"] == *t)
                .unwrap_or_else(|| panic!("unexpected frame {f} while waiting for {types:?}"));
            assert!(got[i].is_none(), "a second {} frame: {f}", types[i]);
            got[i] = Some(f);
        }
        got.into_iter().map(|f| f.expect("filled")).collect()
    }
}

/// Opens a WebSocket to `url` sending extra handshake headers (`Origin`, `Authorization`, ...).
pub async fn ws_connect_with(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<WsClient, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut req = url.into_client_request()?;
    for (name, value) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(WsClient {
        ws,
        frames: vec![],
        closed: None,
    })
}

/// The HTTP status of a refused WebSocket handshake; panics if the handshake succeeded or
/// failed in some other way.
pub fn refused_status(r: Result<WsClient, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Ok(_) => panic!("the WebSocket handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

/// The HTTP status and JSON error body of a refused WebSocket handshake.
pub fn refused_with_body(
    r: Result<WsClient, tokio_tungstenite::tungstenite::Error>,
) -> (u16, Value) {
    match r {
        Ok(_) => panic!("the WebSocket handshake was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

/// A WebSocket on a socket with a 4 KiB receive buffer, so the server's side fills quickly;
/// returns it with its local port.
pub async fn small_buffer_ws(
    app: &TestApp,
    user: &str,
) -> (
    tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    u16,
) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = sock
        .connect(([127, 0, 0, 1], app.port).into())
        .await
        .expect("connect");
    let port = stream.local_addr().expect("local addr").port();
    let (mut ws, _) = tokio_tungstenite::client_async(app.ws_url(&token(user), None), stream)
        .await
        .expect("handshake");
    let hello = futures_util::StreamExt::next(&mut ws)
        .await
        .expect("hello")
        .expect("hello frame");
    assert!(hello.to_string().contains("hello"));
    (ws, port)
}
