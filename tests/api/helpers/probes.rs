//! What the kernel says about this process and its sockets (`/proc`).

/// This process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Whether the kernel still holds an ESTABLISHED TCP connection from `client_port` to the
/// server's `server_port` on the server's side (`/proc/net/tcp`, local address first).
pub fn server_side_established(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| {
            addr.rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok())
        };
        cols.len() > 3
            && port(cols[1]) == Some(server_port)
            && port(cols[2]) == Some(client_port)
            && cols[3] == "01"
    })
}

/// The kernel's queues of both ends of a loopback TCP connection, read in one pass over
/// `/proc/net/tcp`: (bytes the client's side has not had acknowledged, bytes the server's side
/// has received and the server process not read). `None` if either end is not listed.
pub fn loopback_queues(server_port: u16, client_port: u16) -> Option<(usize, usize)> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    // Columns: sl, local address, remote address, state, tx_queue:rx_queue (hex), …
    let queues = |local: u16, remote: u16| {
        table.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 5 || port(cols[1]) != Some(local) || port(cols[2]) != Some(remote) {
                return None;
            }
            let (tx, rx) = cols[4].split_once(':')?;
            Some((
                usize::from_str_radix(tx, 16).ok()?,
                usize::from_str_radix(rx, 16).ok()?,
            ))
        })
    };
    let (client_unacked, _) = queues(client_port, server_port)?;
    let (_, server_unread) = queues(server_port, client_port)?;
    Some((client_unacked, server_unread))
}

/// Whether the server process still holds its side of the TCP connection from `client_port`
/// to `server_port`: listed ESTABLISHED (`01`) or CLOSE_WAIT (`08`, the client has closed and
/// the server not yet), so not yet closed by the server.
pub fn server_side_held(server_port: u16, client_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 3
            && port(cols[1]) == Some(server_port)
            && port(cols[2]) == Some(client_port)
            && (cols[3] == "01" || cols[3] == "08")
    })
}
