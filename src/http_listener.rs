//! The node's HTTP listening socket, bound with a deep accept queue.
//!
//! `std::net::TcpListener::bind` listens with a backlog of 128. When a node dies, all its
//! clients reconnect to the survivors within a second: 15,000 SYNs at once overflowed a
//! 128-entry accept queue (measured: 3,451 `ListenOverflows` in one storm bench), the kernel
//! dropped the SYNs it had no room for, and each such client (also a service opening a new
//! connection for a POST) waited for its SYN's retransmission, 1 s later (then 3 s, 7 s...).
//! That second was the POST p99 on the survivor during the storm. Handshakes are cheap to
//! queue in the kernel; what they cost the node is bounded later, by the admission cap
//! (`NOTIFYD_WS_MAX_JOINING`).

use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept-queue length asked of the kernel, which caps it at `net.core.somaxconn` (4,096 by
/// default since Linux 5.4). Large enough for a survivor's share of a dead node's clients
/// arriving at once; each queued connection costs the kernel a few hundred bytes.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Binds `addr` (as `NOTIFYD_BIND` spells it: `host:port`, resolved like `TcpListener::bind`
/// does, first address that binds wins) with `SO_REUSEADDR` (as std sets it on Unix) and a
/// backlog of `LISTEN_BACKLOG`.
pub fn bind(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for a in addr.to_socket_addrs()? {
        match bind_one(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        )
    }))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;
    use std::time::Duration;

    /// More connections than std's backlog of 128 complete their handshake while the node has
    /// not accepted any (as when its workers are busy with a reconnect storm): the kernel
    /// queues them instead of dropping their SYNs. With std's `bind` the 130th connect waits
    /// for SYN retransmissions and fails at the bound below.
    #[test]
    fn connections_beyond_128_queue_while_none_is_accepted() {
        let listener = bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut held = vec![];
        for i in 0..600 {
            // The bound only decides how long a broken build takes to fail.
            let c = TcpStream::connect_timeout(&addr, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("connection {i} was not queued: {e}"));
            held.push(c);
        }
        assert_eq!(held.len(), 600);
    }

    #[test]
    fn binds_a_host_name_like_std_does() {
        let l = bind("localhost:0").expect("bind localhost");
        assert!(l.local_addr().expect("addr").ip().is_loopback());
    }
}
