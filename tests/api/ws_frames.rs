//! The WebSocket wire as a hostile client writes it (contract §7, "Frames", "Fragments", "Close
//! codes"): sizes are judged at the frame header, a fragmented message counts its fragments'
//! headers and is capped in fragments, and each kind of violation closes with its RFC 6455 code:
//! 1002 protocol error, 1007 invalid UTF-8, 1009 too large. Frames are written byte by byte on a
//! raw socket, so nothing in a client library smooths them over.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Deadline for anything that should happen "now" (never a measure of speed).
const T: Duration = Duration::from_secs(15);

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One client frame as RFC 6455 §5.2 lays it out: FIN, RSV bits and opcode in the first byte,
/// the minimal length encoding, masked unless `masked` is false.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut f = vec![(if fin { 0x80 } else { 0 }) | (rsv << 4) | opcode];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => f.push(mask_bit | n as u8),
        n @ 126..=65535 => {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        f.extend_from_slice(&MASK);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// A masked frame with no RSV bits.
fn data(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, 0, opcode, payload, true)
}

const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const PING: u8 = 0x9;

/// Opens a raw WebSocket for a new user, writes `bytes`, and returns the close code the server
/// answers with.
async fn close_code_after(app: &TestApp, bytes: &[u8]) -> Option<u16> {
    let mut s = raw_ws(app, &new_user()).await;
    s.write_all(bytes).await.expect("write the frames");
    read_close_code(&mut s, T).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_announcing_more_than_64_kib_closes_1009_before_its_payload_arrives() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    // The header announces 1 MiB; only 1 KiB of it is ever sent.
    let mut bytes = vec![0x81, 0x80 | 127];
    bytes.extend_from_slice(&(1u64 << 20).to_be_bytes());
    bytes.extend_from_slice(&MASK);
    bytes.extend(vec![b'x'; 1024]);
    assert_eq!(close_code_after(&app, &bytes).await, Some(1009));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fragments_count_their_headers_and_close_with_1009() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    // 10,000 payload bytes in one-byte fragments: far under 64 KiB of payload, but each fragment
    // also costs its 6-byte header (70,000 bytes in all). The message is never finished.
    let mut bytes = data(false, TEXT, b"{");
    for _ in 0..9_999 {
        bytes.extend(data(false, CONT, b" "));
    }
    assert_eq!(close_code_after(&app, &bytes).await, Some(1009));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_more_fragments_than_the_cap_closes_with_1009() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    // 129 fragments of 8 bytes: about 1.8 KB in all, one fragment over the documented cap (128).
    let mut bytes = data(false, TEXT, b"{\"type\":");
    for _ in 0..127 {
        bytes.extend(data(false, CONT, b"        "));
    }
    bytes.extend(data(true, CONT, b"\"ping\"} "));
    assert_eq!(close_code_after(&app, &bytes).await, Some(1009));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_command_within_the_limits_is_answered_with_a_ping_between_its_fragments() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let u = new_user();
    let parts: [&[u8]; 3] = [b"{\"type\":\"pi", b"ng\",\"ref\":", b"\"frag\"}"];
    let mut s = raw_ws(&app, &u).await;
    let mut bytes = data(false, TEXT, parts[0]);
    bytes.extend(data(false, CONT, parts[1]));
    bytes.extend(data(true, PING, b"between"));
    bytes.extend(data(true, CONT, parts[2]));
    s.write_all(&bytes).await.expect("write");
    let text = read_text_frames_until(&mut s, "\"frag\"", T).await;
    let pong = serde_json::json!({"type": "pong", "ref": "frag"});
    assert!(
        text.lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).ok() == Some(pong.clone())),
        "no pong for the fragmented ping: {text}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_protocol_violation_closes_with_1002() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let ping = br#"{"type":"ping"}"#;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an unmasked frame", frame(true, 0, TEXT, ping, false)),
        ("a reserved bit set", frame(true, 0b100, TEXT, ping, true)),
        ("a reserved data opcode", data(true, 0x3, ping)),
        ("a reserved control opcode", data(true, 0xb, b"")),
        ("a continuation without a start", data(true, CONT, ping)),
        ("a fragmented control frame", data(false, PING, b"p")),
        (
            "a control frame over 125 bytes",
            data(true, PING, &[b'p'; 126]),
        ),
        ("a new message inside a fragmented one", {
            let mut b = data(false, TEXT, b"{");
            b.extend(data(true, TEXT, ping));
            b
        }),
    ];
    for (what, bytes) in cases {
        assert_eq!(close_code_after(&app, &bytes).await, Some(1002), "{what}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_message_closes_with_1007() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let whole = data(true, TEXT, b"{\"type\":\"ping\",\"ref\":\"\xff\xfe\"}");
    assert_eq!(
        close_code_after(&app, &whole).await,
        Some(1007),
        "one frame"
    );
    let mut fragmented = data(false, TEXT, b"{\"type\":\"ping\",\"ref\":\"\xc3");
    fragmented.extend(data(true, CONT, b"\x28\"}"));
    assert_eq!(
        close_code_after(&app, &fragmented).await,
        Some(1007),
        "fragments"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_refused_for_a_frame_meets_tcp_backpressure_not_a_reader() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    let written = bytes_taken_after_a_huge_frame(&mut s, Duration::from_secs(3)).await;
    // What the kernel's buffers on both sides hold (a few MB on loopback) and what the server
    // read before it saw the header: far less than a server reading on at full speed takes.
    assert!(
        written < 64 << 20,
        "the server went on reading a refused client: {} MB taken in 3 s",
        written >> 20
    );
    app.stop().await;
}

/// Reads server frames (unmasked, as a server sends them) until one contains `needle` or
/// `timeout` passes; returns the text frames read, joined.
async fn read_text_frames_until<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    needle: &str,
    timeout: Duration,
) -> String {
    let frames = read_frames(s, timeout, |op, payload| {
        op == TEXT && String::from_utf8_lossy(payload).contains(needle)
    })
    .await;
    let mut all = String::new();
    for (_, payload) in frames.iter().filter(|(op, _)| *op == TEXT) {
        all.push_str(&String::from_utf8_lossy(payload));
        all.push('\n');
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_and_frames_are_never_logged_above_warn() {
    use crate::binary::{free_port, node_env, Notifyd};
    let db = TestDb::new().await;
    let port = free_port();
    let mut node = Notifyd::start(&["serve"], &node_env(&db, port), port);
    node.healthy().await;

    // Requests actix-http cannot parse.
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nthis is no header\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 (a TLS hello on the plain port)\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        s.write_all(garbage).await.expect("write");
        let mut answer = vec![];
        let _ = tokio::time::timeout(T, s.read_to_end(&mut answer)).await;
    }
    // Frames the WebSocket layer refuses: a fragmented control frame ("Unfinished fragment"),
    // an unmasked frame, a header over the limit.
    for bad in [
        data(false, PING, b"p"),
        frame(true, 0, TEXT, b"{}", false),
        data(true, TEXT, &[b' '; 70_000]),
    ] {
        let mut s = raw_ws_token(port, &token(&new_user())).await;
        s.write_all(&bad).await.expect("frame");
        let code = read_close_code(&mut s, T).await;
        assert!(matches!(code, Some(1002 | 1009)), "closed with {code:?}");
    }

    let (stdout, stderr) = node.stop().await;
    let logs = format!("{stdout}{stderr}");
    let errors: Vec<&str> = logs.lines().filter(|l| l.contains("ERROR")).collect();
    assert!(errors.is_empty(), "a client wrote ERROR lines: {errors:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_that_would_take_a_message_past_64_kib_closes_1009_at_its_header() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    // 60,000 bytes of a text message, then a continuation header announcing 60,000 more that
    // never come: the message would be 120,000 bytes, and nothing of it is to be buffered.
    let mut bytes = data(false, TEXT, &[b' '; 60_000]);
    bytes.extend([0x80, 0x80 | 126]);
    bytes.extend_from_slice(&60_000u16.to_be_bytes());
    bytes.extend_from_slice(&MASK);
    assert_eq!(close_code_after(&app, &bytes).await, Some(1009));
    app.stop().await;
}

/// A client that reads at once but writes many small commands in one go (here 600 `ping`s in
/// one write) gets an answer to each, not a 4008 "slow consumer" close: the session takes a
/// burst in turns with the writer of its answers (found by an attacker's probe: past ~512, the
/// answers filled the socket's queue before the session let its writer run, and the socket was
/// closed with none of them sent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_commands_from_a_client_that_reads_is_answered_in_full() {
    const N: usize = 600;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    let mut bytes = vec![];
    for i in 0..N {
        bytes.extend(data(
            true,
            TEXT,
            format!(r#"{{"type":"ping","ref":"p{i}"}}"#).as_bytes(),
        ));
    }
    s.write_all(&bytes).await.expect("write the burst");
    let last = format!("\"p{}\"", N - 1);
    let text = read_text_frames_until(&mut s, &last, Duration::from_secs(30)).await;
    let pongs = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "pong")
        .count();
    assert_eq!(pongs, N, "answers to a burst of {N} pings");
    app.stop().await;
}

/// A client that writes far more than the server buffers for it (here 4,000 `ping` commands,
/// ~140 KB, in one write) is read to the end: actix-http takes the client's bytes one read at a
/// time as the session asks for them (actix-http patch 5), and each time the session takes a
/// chunk off a full queue the connection is read again, never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_far_past_the_servers_buffers_is_read_to_the_end() {
    const N: usize = 4_000;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let s = raw_ws(&app, &new_user()).await;
    let mut bytes = vec![];
    for i in 0..N {
        bytes.extend(data(
            true,
            TEXT,
            format!(r#"{{"type":"ping","ref":"p{i}"}}"#).as_bytes(),
        ));
    }
    assert!(
        bytes.len() > 4 * 32 * 1024,
        "the burst is larger than the buffers"
    );
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move { wr.write_all(&bytes).await.map(|()| wr) });
    let last = format!("\"p{}\"", N - 1);
    let text = read_text_frames_until(&mut rd, &last, Duration::from_secs(60)).await;
    let pongs = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "pong")
        .count();
    assert_eq!(pongs, N, "answers to a burst of {N} pings");
    let _ = writer.await;
    app.stop().await;
}

/// A client that goes away without a close frame (its side of the TCP connection ends) broke no
/// rule of the protocol: it is not answered, nor counted, as a protocol error (1002). (Found by
/// an attacker's probe: every such disconnect was, which drowned the real violations in
/// `notifyd_ws_protocol_errors_total`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_without_a_close_frame_is_not_a_protocol_error() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    read_text_frames_until(&mut s, "\"hello\"", T).await;
    s.shutdown().await.expect("half-close");
    assert_ne!(read_close_code(&mut s, T).await, Some(1002));
    app.stop().await;
}

const PONG: u8 = 0xA;

/// Reads server frames until `done` says so for one, or `timeout` passes; returns every frame
/// read, as (opcode, payload).
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(
    s: &mut R,
    timeout: Duration,
    mut done: impl FnMut(u8, &[u8]) -> bool,
) -> Vec<(u8, Vec<u8>)> {
    let mut frames = vec![];
    let read = async {
        loop {
            let mut h = [0u8; 2];
            if s.read_exact(&mut h).await.is_err() {
                return;
            }
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    if s.read_exact(&mut l).await.is_err() {
                        return;
                    }
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    if s.read_exact(&mut l).await.is_err() {
                        return;
                    }
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return;
            }
            let stop = done(h[0] & 0x0f, &payload);
            frames.push((h[0] & 0x0f, payload));
            if stop {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, read).await;
    frames
}

/// The documented control-frame budget of a session (docs/websocket.md, "control frames"):
/// 20 pings and pongs at once, then 10 a second.
const CONTROL_BURST: u32 = 20;
const CONTROL_PER_SECOND: f64 = 10.0;

/// A client flooding WebSocket pings (found by an attacker's probe: two such sockets took
/// another client's `/healthz` p99 from 1.2 to 54 ms) is read no faster than the control-frame
/// budget: the session answers the burst, then stops reading between pings, so the rest waits
/// in TCP and costs the node nothing. How far it read shows in the pings it answered (each
/// carries its index; pongs owed to a client that pings faster than it reads are coalesced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_read_no_faster_than_the_control_frame_budget() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    read_text_frames_until(&mut s, "\"hello\"", T).await;
    let start = std::time::Instant::now();
    let flood: Vec<u8> = (0..5_000u32)
        .flat_map(|i| data(true, PING, &i.to_be_bytes()))
        .collect();
    s.write_all(&flood).await.expect("write the flood");
    let frames = read_frames(&mut s, Duration::from_secs(2), |_, _| false).await;
    let elapsed = start.elapsed().as_secs_f64();
    let answered: Vec<u32> = frames
        .iter()
        .filter(|(op, _)| *op == PONG)
        .filter_map(|(_, p)| <[u8; 4]>::try_from(&p[..]).ok())
        .map(u32::from_be_bytes)
        .collect();
    let furthest = *answered.iter().max().expect("the first pings are answered");
    // The k-th ping read past the burst is read (k / 10) s after the first at the earliest.
    let budget = CONTROL_BURST + (CONTROL_PER_SECOND * elapsed).floor() as u32;
    assert!(
        furthest < budget,
        "ping {furthest} of 5,000 answered within {elapsed:.2} s (budget {budget})"
    );
    app.stop().await;
}

/// Unsolicited pongs count against the same budget: a ping sent behind 2,000 of them is not
/// read for minutes (2,000 / 10 a second), while a client that pings now and then (as a normal
/// one does, a few times per heartbeat) is answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_pongs_count_against_the_control_frame_budget() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    read_text_frames_until(&mut s, "\"hello\"", T).await;
    s.write_all(&data(true, PING, b"first"))
        .await
        .expect("ping");
    let frames = read_frames(&mut s, T, |op, p| op == PONG && p == b"first").await;
    assert!(
        frames.iter().any(|(op, p)| *op == PONG && p == b"first"),
        "a single ping is answered"
    );
    let mut flood: Vec<u8> = (0..2_000)
        .flat_map(|_| data(true, PONG, b"blind"))
        .collect();
    flood.extend(data(true, PING, b"after"));
    s.write_all(&flood).await.expect("write the flood");
    let frames = read_frames(&mut s, Duration::from_secs(3), |op, p| {
        op == PONG && p == b"after"
    })
    .await;
    assert!(
        !frames.iter().any(|(op, p)| *op == PONG && p == b"after"),
        "the ping behind 2,000 pongs was read within 3 s"
    );
    app.stop().await;
}

/// A ping behind more unsolicited pongs than one read of the socket takes (70 of 125 bytes,
/// ~9 KB, in one write: pongs are answered with nothing, so nothing the node writes wakes the
/// connection) is answered once the control-frame budget allows it (~5 s): the connection is
/// read again after each read the session's queue asks for (actix-http patch 5), not only when
/// the client sends more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_behind_silent_frames_that_fill_a_read_is_answered_within_the_budget() {
    const PONGS: usize = 70;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let mut s = raw_ws(&app, &new_user()).await;
    read_text_frames_until(&mut s, "\"hello\"", T).await;
    let mut bytes: Vec<u8> = (0..PONGS)
        .flat_map(|_| data(true, PONG, &[b'q'; 125]))
        .collect();
    assert!(bytes.len() > 8 * 1024, "more than one read");
    bytes.extend(data(true, PING, b"after"));
    s.write_all(&bytes)
        .await
        .expect("write the pongs and the ping");
    // Its turn comes (PONGS + 1 - 20) / 10 s after the burst: T leaves room to spare.
    let frames = read_frames(&mut s, T, |op, p| op == PONG && p == b"after").await;
    assert!(
        frames.iter().any(|(op, p)| *op == PONG && p == b"after"),
        "the ping behind {PONGS} pongs was not answered"
    );
    app.stop().await;
}

/// What a session that stopped reading (its control-frame budget is spent) holds of a client's
/// flood is bounded by the request payload's queue, whatever the client keeps writing from its
/// handshake on: the payload's 32 KiB (actix-http's `payload::MAX_BUFFER_SIZE`, past which it
/// asks not to be fed) plus one 8 KiB read past it, and one read chunk in the session's reader
/// (docs/websocket.md, "control frames"). The rest waits in the kernel, and the client's writes
/// block (TCP back-pressure). The flood starts in the handshake's own write, so it is read
/// before the request (and its payload) is known.
///
/// Measured without timing: every byte the client wrote is in one of five places, its own
/// kernel's send queue (not yet acknowledged), the node's kernel's receive queue (not yet read),
/// the request's head, a ping the session answered (counted generously, from its budget), or
/// the node's memory. `/proc/net/tcp` gives the first two at once; what is left is held in the
/// node's memory (a lower bound of what it holds: capacity comes on top). The client drains the
/// node's answers, so nothing the node writes waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_session_holds_no_more_of_a_flood_than_the_payload_bound() {
    const PAYLOAD_BOUND: usize = 32 * 1024;
    const READ_CHUNK: usize = 8 * 1024;
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::default()).await;
    let s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect");
    let port = s.local_addr().expect("local addr").port();
    let (mut rd, wr) = s.into_split();
    let drain = tokio::spawn(async move {
        let mut sink = vec![0u8; 64 * 1024];
        while matches!(rd.read(&mut sink).await, Ok(n) if n > 0) {}
    });
    // Empty pings, 6 bytes each: the most frames per byte, so the session's budget takes the
    // fewest bytes out of what it holds.
    let ping = data(true, PING, b"");
    let head = upgrade_request_head(&token(&new_user())).into_bytes();
    let flood = [head.clone(), ping.repeat(20_000)].concat();
    let start = std::time::Instant::now();
    let mut written = 0usize;
    let mut most_held = 0usize;
    // Write until the kernel's buffers are full (the write would block), then look 20 times,
    // topping up whatever the node took in between: it had every chance to take more.
    let mut looks = 0;
    while looks < 20 {
        // The head and the first pings in one write; then the ping stream from where the last
        // (partial) write left it.
        let next = if written < flood.len() {
            &flood[written..]
        } else {
            &flood[head.len() + (written - head.len()) % ping.len()..]
        };
        match wr.try_write(next) {
            Ok(n) => {
                written += n;
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the flooding socket failed after {written} bytes: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        looks += 1;
        let (client_unacked, server_unread) =
            loopback_queues(app.port, port).expect("both ends in /proc/net/tcp");
        let taken = written.saturating_sub(client_unacked + server_unread + head.len());
        let pings_answered = CONTROL_BURST as usize
            + (CONTROL_PER_SECOND as usize) * (start.elapsed().as_secs() as usize + 1);
        let held = taken.saturating_sub(pings_answered * ping.len());
        most_held = most_held.max(held);
    }
    eprintln!("held at most {most_held} bytes of {written} written");
    assert!(
        most_held <= PAYLOAD_BOUND + 2 * READ_CHUNK,
        "the paused session's connection held {most_held} bytes of the flood \
         (bound {} bytes; {written} written)",
        PAYLOAD_BOUND + 2 * READ_CHUNK
    );
    drain.abort();
    app.stop().await;
}

/// A flooding client that leaves while its session is paused (the node is not reading its
/// socket, so it does not see the end of the stream) is still let go: the session's own timers
/// end it (its heartbeat ping cannot be written to a closed peer, or its pong is not read within
/// the liveness window), and the node closes its side of the connection. With a 1 s heartbeat
/// that is a few seconds; T leaves room to spare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_that_leaves_while_paused_is_let_go() {
    let db = TestDb::new().await;
    let app = spawn_app(&db, Opts::fast_heartbeat()).await;
    let (mut s, port) = raw_ws_with(&app, &new_user(), None).await;
    read_text_frames_until(&mut s, "\"hello\"", T).await;
    let (mut rd, wr) = s.into_split();
    let ping = data(true, PING, b"");
    let flood = ping.repeat(20_000);
    let mut written = 0usize;
    // Until the kernel's buffers are full: the node has stopped reading.
    while let Ok(n) = wr.try_write(&flood[written % ping.len()..]) {
        written += n;
    }
    assert!(written > 64 * 1024, "only {written} bytes written");
    // Leaves: drain what it was sent (so closing sends a FIN, not a reset), then close.
    let mut sink = vec![0u8; 64 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), rd.read(&mut sink)).await
    {
        if n == 0 {
            break;
        }
    }
    drop((rd, wr));
    eventually(
        T,
        "the node closes the connection of a client that left",
        || async { (!server_side_held(app.port, port)).then_some(()) },
    )
    .await;
    app.stop().await;
}
