//! The TCP connection under a WebSocket or an SSE stream, so the gateway can drop it when the
//! peer stops reading.
//!
//! A client that stops reading fills its socket's buffers; actix-http then waits for the socket
//! to become writable, with no timeout, and the connection (its buffers, its file descriptor)
//! would stay forever even after the session was closed. So every accepted connection records
//! its file descriptor (`on_connect`), and a closing session whose connection is still there
//! after the close grace shuts the socket down and resets it.
//!
//! Safety of using a raw descriptor: the `alive` token lives in the connection's data, which
//! actix-http drops together with the socket when the connection ends. `hard_drop` runs on the
//! same single-threaded actix worker that owns the connection (sessions are spawned with
//! `actix_web::rt::spawn`) and checks the token first, so it can never reach a descriptor number
//! that was closed and reused by another connection.

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use actix_web::dev::Extensions;

/// Stored in each connection's data at accept time.
struct ConnSocket {
    fd: RawFd,
    alive: Rc<()>,
}

/// The server's on-connect hook (`http_server::Options::on_connect`): remembers the socket of
/// every TCP connection.
pub fn on_connect(conn: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        data.insert(ConnSocket {
            fd: tcp.as_raw_fd(),
            alive: Rc::new(()),
        });
    }
}

/// A handle on one request's TCP connection that does not keep it open.
#[derive(Clone)]
pub struct Conn {
    fd: RawFd,
    alive: Weak<()>,
}

impl Conn {
    pub fn of(req: &actix_web::HttpRequest) -> Option<Conn> {
        req.conn_data::<ConnSocket>().map(|s| Conn {
            fd: s.fd,
            alive: Rc::downgrade(&s.alive),
        })
    }

    pub fn is_open(&self) -> bool {
        self.alive.strong_count() > 0
    }

    /// Waits up to `limit` for the connection to end (there is no event for it: it is polled).
    pub async fn wait_closed(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.is_open() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits up to `grace` for the connection to end by itself, then resets it.
    pub async fn drop_after(&self, grace: Duration) {
        self.wait_closed(grace).await;
        self.hard_drop();
    }

    /// Whether the client has closed its side (or reset the connection) while its request was
    /// still being answered. actix-http notices a client's FIN only when it next reads, not
    /// while a handler is pending, so a handshake that waited for its turn looks here before
    /// it spends a turn on a client that has gone. A peek: nothing is taken from the socket.
    pub fn peer_closed(&self) -> bool {
        self.with_socket(|sock| {
            let mut byte = [std::mem::MaybeUninit::<u8>::uninit(); 1];
            // The socket is non-blocking (tokio's): no data yet is `WouldBlock`, an end is
            // `Ok(0)`.
            match sock.peek(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            }
        })
        .unwrap_or(true)
    }

    /// Sets `TCP_USER_TIMEOUT`: data left unacknowledged this long makes the kernel drop the
    /// connection (a peer that vanished without FIN or RST; Linux only, a no-op elsewhere).
    pub fn set_user_timeout(&self, timeout: Duration) {
        #[cfg(target_os = "linux")]
        self.with_socket(|sock| {
            if let Err(e) = sock.set_tcp_user_timeout(Some(timeout)) {
                tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
            }
        });
        #[cfg(not(target_os = "linux"))]
        let _ = timeout;
    }

    /// Sets the kernel's send buffer (`SO_SNDBUF`), which also stops its autotuning.
    pub fn set_send_buffer(&self, bytes: usize) {
        self.with_socket(|sock| {
            if let Err(e) = sock.set_send_buffer_size(bytes) {
                tracing::debug!(error = %e, "SO_SNDBUF not set");
            }
        });
    }

    /// Resets the connection now (RST, buffers freed) if it is still open.
    pub fn hard_drop(&self) {
        self.with_socket(|sock| {
            // Linger 0: the close that follows sends RST and frees the unsent data at once.
            let _ = sock.set_linger(Some(Duration::ZERO));
            let _ = sock.shutdown(std::net::Shutdown::Both);
            metrics::counter!("notifyd_ws_connections_reset_total").increment(1);
        });
    }

    /// `f` on the connection's socket if the connection is still open (`None`: it is gone).
    fn with_socket<R>(&self, f: impl FnOnce(socket2::SockRef<'_>) -> R) -> Option<R> {
        if !self.is_open() {
            return None;
        }
        // SAFETY: the connection (and so the descriptor) is open: see the module comment.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        Some(f(socket2::SockRef::from(&fd)))
    }
}
