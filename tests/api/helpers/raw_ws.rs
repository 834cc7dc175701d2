//! WebSockets written byte by byte on raw TCP streams, for what a well-behaved client library
//! never sends: frames by hand, huge announced payloads, unread sockets.

use std::time::Duration;

use super::app::TestApp;
use super::tokens::token;

/// Opens a WebSocket by hand on a raw TCP stream (the tests below write frames byte by byte).
pub async fn raw_ws(app: &TestApp, user: &str) -> tokio::net::TcpStream {
    raw_ws_with(app, user, None).await.0
}

/// `raw_ws` with an optional receive buffer size (a small one fills the server's side fast);
/// returns the stream and its local port.
pub async fn raw_ws_with(
    app: &TestApp,
    user: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    let (mut s, port) = raw_upgrade_request(app, user, recv_buffer).await;
    read_upgrade_answer(&mut s).await;
    (s, port)
}

/// A raw WebSocket to the node on `port` with `token` (any token, or none that is valid), its
/// `101` answer read: the next bytes are frames.
pub async fn raw_ws_token(port: u16, token: &str) -> tokio::net::TcpStream {
    let (mut s, _) = raw_upgrade_request_to(port, token, None).await;
    read_upgrade_answer(&mut s).await;
    s
}

/// Reads a WebSocket handshake's answer up to its blank line; it must be `101`.
pub async fn read_upgrade_answer(s: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut head = vec![];
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).await.expect("handshake answer");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
}

/// A TCP connection to `app` that has sent `user`'s WebSocket upgrade request and read nothing
/// yet; returns the stream and its local port.
pub async fn raw_upgrade_request(
    app: &TestApp,
    user: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    raw_upgrade_request_to(app.port, &token(user), recv_buffer).await
}

/// `raw_upgrade_request` to the node on `port`, with `token` as it is.
pub async fn raw_upgrade_request_to(
    port: u16,
    token: &str,
    recv_buffer: Option<u32>,
) -> (tokio::net::TcpStream, u16) {
    use tokio::io::AsyncWriteExt;
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    if let Some(size) = recv_buffer {
        sock.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let mut s = sock
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect");
    let local = s.local_addr().expect("local addr").port();
    s.write_all(upgrade_request_head(token).as_bytes())
        .await
        .expect("handshake");
    (s, local)
}

/// A WebSocket upgrade request for `/ws` with `token` in its query, as written on the wire.
pub fn upgrade_request_head(token: &str) -> String {
    format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Writes a masked binary frame header announcing 1 GiB, then as much of its payload as the
/// server takes within `limit`; returns the payload bytes it took. A server that stopped reading
/// leaves the client to TCP back-pressure (a few MB of kernel buffers on loopback); one that
/// reads and discards takes hundreds of MB.
pub async fn bytes_taken_after_a_huge_frame(
    s: &mut tokio::net::TcpStream,
    limit: Duration,
) -> usize {
    use tokio::io::AsyncWriteExt;
    let mut head = vec![0x82, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 30).to_be_bytes());
    head.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    s.write_all(&head).await.expect("header");
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0usize;
    let until = tokio::time::Instant::now() + limit;
    while written < (1 << 30) {
        match tokio::time::timeout_at(until, s.write(&chunk)).await {
            Ok(Ok(n)) => written += n,
            Ok(Err(_)) | Err(_) => break, // reset by the server, or blocked: both are fine
        }
    }
    written
}

/// Reads server frames until a close frame; returns its code (`None` if the connection ended
/// without one or `timeout` passed).
pub async fn read_close_code<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    timeout: Duration,
) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let mut h = [0u8; 2];
            s.read_exact(&mut h).await.ok()?;
            let opcode = h[0] & 0x0f;
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    s.read_exact(&mut l).await.ok()?;
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    s.read_exact(&mut l).await.ok()?;
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.ok()?;
            if opcode == 0x8 {
                return (len >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    };
    tokio::time::timeout(timeout, read).await.ok().flatten()
}

/// A masked client frame (raw-socket tests).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    assert!(payload.len() < 126, "control-sized frames only");
    let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}
