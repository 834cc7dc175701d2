//! Memory bounds of the gateway under hostile clients, measured as this process's RSS (the node
//! runs in-process). A test binary of their own, run one at a time, so no other test's
//! allocations blur the figure.

// This binary uses a part of the harness: the rest of its re-exports go unused here.
#[path = "../api/helpers/mod.rs"]
#[allow(unused_imports)]
mod helpers;

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

/// One measurement at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_header_announcing_1_tib_closes_with_1009_at_once_and_nothing_is_buffered() {
    let _one = SERIAL.lock().await;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    // A masked text frame whose header announces 2^40 bytes, and the first 16 KiB of them.
    let mut frame = vec![0x81u8, 0x80 | 127];
    frame.extend_from_slice(&(1u64 << 40).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&vec![b'x'; 16 * 1024]);
    s.write_all(&frame).await.expect("write the header");
    let (mut rd, mut wr) = s.into_split();
    let rss_before = rss_bytes();
    // Keep streaming (as the attacker would) for up to 20 s while waiting for the close frame.
    let streamer = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0usize;
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::Instant::now() < end {
            match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len(),
                _ => return (sent, true), // reset by the server, or it stopped reading
            }
        }
        (sent, false)
    });
    let code = read_close_code(&mut rd, T).await;
    assert_eq!(
        code,
        Some(1009),
        "no 1009 close while the 1 TiB frame streams in"
    );
    let (sent, cut_off) = streamer.await.expect("streamer");
    assert!(cut_off, "the server took 1 GiB of a frame it had refused");
    // The node runs in this process: what it buffered for the frame shows in our RSS.
    let grown = rss_bytes().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024 * 1024,
        "memory grew by {grown} bytes while {sent} bytes of a refused frame streamed in"
    );
}

/// Found by an attacker's review: pongs the server owed were queued as slices of its read
/// buffer, outside the byte budget, so a client pinging without reading pinned ~24 MiB per socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_without_reading_pins_no_memory() {
    let _one = SERIAL.lock().await;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let mut conns = vec![];
    for _ in 0..4 {
        conns.push(raw_ws_with(&app, &u, Some(2048)).await);
    }
    // First fill the server's socket toward each client (it never reads), so the session's
    // writer is blocked and whatever the server owes the client waits in its queue.
    let dense: Vec<u8> = (0..150)
        .flat_map(|_| client_frame(0x9, &[b'd'; 125]))
        .collect();
    for (s, port) in conns.iter_mut() {
        let mut last = 0;
        for _ in 0..200 {
            if s.write_all(&dense).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            let q = server_tx_queue(app.port, *port);
            if q == last && q > 0 {
                break;
            }
            last = q;
        }
    }
    // Then pings interleaved with unsolicited pongs, ~60 KiB per write, never reading.
    let mut burst = client_frame(0x9, &[b'p'; 125]);
    let filler = client_frame(0xA, &[b'f'; 125]);
    while burst.len() < 60 * 1024 {
        burst.extend_from_slice(&filler);
    }
    let before = rss_bytes();
    // At most 700 rounds or 40 s: a server that stops reading or closes ends a round early.
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    for _ in 0..700 {
        if tokio::time::Instant::now() > end {
            break;
        }
        for (s, _) in conns.iter_mut() {
            match tokio::time::timeout(Duration::from_secs(10), s.write_all(&burst)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!("pinged: RSS grew {} KiB", grown >> 10);
    assert!(
        grown < 16 * 1024 * 1024,
        "4 non-reading sockets pinned {} MiB with pings",
        grown >> 20
    );
    app.stop().await;
}

/// The server's kernel send queue (bytes) toward `client_port` (`/proc/net/tcp` tx_queue).
fn server_tx_queue(server_port: u16, client_port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() > 4 && port(c[1]) == Some(server_port) && port(c[2]) == Some(client_port))
        .and_then(|c| {
            c[4].split(':')
                .next()
                .and_then(|q| usize::from_str_radix(q, 16).ok())
        })
        .unwrap_or(0)
}

/// A masked client frame of any size (FIN bit, opcode), the minimal length encoding.
fn long_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11u8, 0x22, 0x33, 0x44];
    let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=65535 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A measurement, not a check (ignored; run it alone with `--ignored --nocapture`): RSS per
/// socket of 200 sockets that each hold an unfinished text message of ~63 KiB (15 fragments of
/// 4,200 bytes and the first 100 bytes of a 16th), over the same 200 sockets idle. Contract §7:
/// at most 64 KiB plus a fixed overhead each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rss_per_socket_holding_an_unfinished_63_kib_message() {
    const SOCKETS: usize = 200;
    let _one = SERIAL.lock().await;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut conns = vec![];
    for _ in 0..SOCKETS {
        conns.push(raw_ws(&app, &new_user()).await);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_bytes();
    let mut message = long_frame(false, 0x1, &[b' '; 4_200]);
    for _ in 0..14 {
        message.extend(long_frame(false, 0x0, &[b' '; 4_200]));
    }
    message.extend(&long_frame(false, 0x0, &[b' '; 2_000])[..108]);
    for s in conns.iter_mut() {
        s.write_all(&message).await.expect("write the message");
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = rss_bytes();
    eprintln!(
        "{SOCKETS} sockets: idle RSS {} KiB, holding {} KiB: {:.1} KiB per socket",
        idle >> 10,
        held >> 10,
        held.saturating_sub(idle) as f64 / 1024.0 / SOCKETS as f64
    );
    drop(conns);
    app.stop().await;
}

/// Writes the ping stream `flood` (frames of `frame_len` bytes) on `wr` until the write would
/// block, resuming where `written` bytes left it; false if the socket failed.
fn flood_until_blocked(
    wr: &tokio::net::tcp::OwnedWriteHalf,
    flood: &[u8],
    frame_len: usize,
    written: &mut usize,
) -> bool {
    loop {
        match wr.try_write(&flood[*written % frame_len..]) {
            Ok(n) => *written += n,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

/// A measurement, not a check (ignored; run it alone with `--ignored --nocapture`): RSS per
/// socket of 10 sockets that each flood empty pings past the control-frame budget until the
/// kernel's buffers are full (each client drains what it is sent), over the same sockets idle.
/// What the paused session's connection holds of the flood (actix-http's buffers: 485 KiB per
/// socket before actix-http patch 5, docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn rss_per_paused_flooding_socket() {
    const SOCKETS: usize = 10;
    let _one = SERIAL.lock().await;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut writers = vec![];
    let mut drains = vec![];
    for _ in 0..SOCKETS {
        let (mut rd, wr) = raw_ws(&app, &new_user()).await.into_split();
        drains.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut sink = vec![0u8; 16 * 1024];
            while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
        writers.push((wr, 0usize));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_bytes();
    let ping = client_frame(0x9, b"");
    let flood = ping.repeat(10_000);
    // Fill, let the node take what it will, and top up: three rounds.
    for _ in 0..3 {
        for (wr, written) in writers.iter_mut() {
            assert!(
                flood_until_blocked(wr, &flood, ping.len(), written),
                "a flooding socket failed"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let held = rss_bytes();
    let written: usize = writers.iter().map(|(_, w)| w).sum();
    eprintln!(
        "{SOCKETS} flooding sockets ({} KiB written in all): idle RSS {} KiB, paused {} KiB: \
         {:.1} KiB per socket",
        written >> 10,
        idle >> 10,
        held >> 10,
        held.saturating_sub(idle) as f64 / 1024.0 / SOCKETS as f64
    );
    for d in drains {
        d.abort();
    }
    drop(writers);
    app.stop().await;
}
