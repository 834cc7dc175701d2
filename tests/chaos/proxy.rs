//! A TCP proxy between the nodes and a backing service (PostgreSQL, Redis), so the harness can
//! make the connections that exist at one moment go *half-open*: silent both ways, never closed.
//!
//! That is what a peer looks like when a NAT or conntrack entry, a load balancer or a firewall
//! drops its flows without a RST, or its host vanishes: the local kernel keeps the socket, writes
//! are accepted, nothing ever comes back, and no error surfaces until something times out. Only
//! the flows open when the fault hits freeze; new connections go through, as they would to a
//! peer that is alive behind a path that was reset. A frozen flow never resumes: after the
//! freeze the proxy resets both of its sockets (RST), as the peer's kernel (or the server's
//! keepalive) eventually does when the path comes back; whatever was in flight is lost.
//!
//! While frozen the proxy keeps reading both sides and drops the bytes, and notes when the
//! node's side closes the connection: that is the node noticing the dead peer on its own. Since
//! the proxy's kernel still ACKs (data and TCP keepalive probes alike), only the application's
//! own timeouts (PING, statement and command timeouts) can notice: the strictest form of the
//! fault, and exactly what a peer whose process hangs while its kernel lives looks like (a
//! stopped Redis, a stuck PostgreSQL backend, a wedged pooler or load balancer in the path).
//!
//! The proxy labels each flow by what the node sends on it (`roles`: the first pattern seen in
//! the node's bytes, e.g. `SUBSCRIBE` for the Redis subscriber), so the fault can say which
//! kinds of connection the nodes gave up on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::util::lock;

/// How long the proxy waits for the backing service to accept a connection before it closes
/// the node's side (as a refused connection would).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowState {
    Open,
    /// Nothing is forwarded either way; both sockets stay open.
    Frozen,
    /// Both sockets are reset (SO_LINGER 0), the flow ends.
    Reset,
}

/// One proxied connection, as the fault sees it.
struct Flow {
    state: watch::Sender<FlowState>,
    /// What the node uses this connection for, from the first `roles` pattern it sent.
    role: Mutex<Option<&'static str>>,
    frozen_at: Mutex<Option<Instant>>,
    /// While frozen: how long after the freeze the node closed its side (it gave up on the
    /// silent peer by itself).
    node_closed_after: Mutex<Option<Duration>>,
}

impl Flow {
    fn is(&self, s: FlowState) -> bool {
        *self.state.borrow() == s
    }

    /// The node's side ended (EOF or error) while the flow was frozen.
    fn node_closed(&self) {
        let at = *lock(&self.frozen_at);
        let mut closed = lock(&self.node_closed_after);
        if let (Some(at), None) = (at, *closed) {
            *closed = Some(at.elapsed());
        }
    }
}

struct Shared {
    target: u16,
    /// (pattern in the node's bytes, ASCII case-insensitive; role it gives the flow).
    roles: &'static [(&'static str, &'static str)],
    next_id: AtomicU64,
    flows: Mutex<HashMap<u64, Arc<Flow>>>,
}

/// A proxy on a free loopback port in front of `127.0.0.1:<target>`.
pub(crate) struct TcpProxy {
    pub(crate) port: u16,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

/// The flows one fault froze.
pub(crate) struct Frozen {
    flows: Vec<Arc<Flow>>,
}

/// Per kind of connection: (role, frozen, closed by the node during the freeze).
pub(crate) type RoleCounts = Vec<(&'static str, usize, usize)>;

/// What happened to the frozen flows by the time they were reset.
pub(crate) struct FreezeOutcome {
    pub(crate) frozen: usize,
    /// Flows whose node side closed during the freeze, with the longest time it took.
    pub(crate) closed_by_node: usize,
    pub(crate) slowest_close: Option<Duration>,
    /// Per role: (frozen, closed by the node during the freeze).
    pub(crate) by_role: RoleCounts,
}

impl TcpProxy {
    pub(crate) async fn start(
        target: u16,
        roles: &'static [(&'static str, &'static str)],
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            roles,
            next_id: AtomicU64::new(0),
            flows: Mutex::new(HashMap::new()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(TcpProxy {
            port,
            shared,
            accept,
        })
    }

    /// Freezes every flow open now. New connections keep going through.
    pub(crate) fn freeze(&self) -> Frozen {
        let flows: Vec<Arc<Flow>> = lock(&self.shared.flows)
            .values()
            .filter(|f| f.is(FlowState::Open))
            .cloned()
            .collect();
        let now = Instant::now();
        for f in &flows {
            *lock(&f.frozen_at) = Some(now);
            f.state.send_replace(FlowState::Frozen);
        }
        Frozen { flows }
    }

    /// Resets every frozen flow (RST on both sides).
    pub(crate) fn reset(&self, frozen: Frozen) -> FreezeOutcome {
        let mut outcome = FreezeOutcome {
            frozen: frozen.flows.len(),
            closed_by_node: 0,
            slowest_close: None,
            by_role: vec![],
        };
        for f in &frozen.flows {
            let closed = *lock(&f.node_closed_after);
            if let Some(d) = closed {
                outcome.closed_by_node += 1;
                outcome.slowest_close = Some(outcome.slowest_close.map_or(d, |s| s.max(d)));
            }
            let role = lock(&f.role).unwrap_or("other");
            match outcome.by_role.iter_mut().find(|r| r.0 == role) {
                Some(r) => {
                    r.1 += 1;
                    r.2 += usize::from(closed.is_some());
                }
                None => outcome
                    .by_role
                    .push((role, 1, usize::from(closed.is_some()))),
            }
            f.state.send_replace(FlowState::Reset);
        }
        outcome.by_role.sort();
        outcome
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for f in lock(&self.shared.flows).values() {
            f.state.send_replace(FlowState::Reset);
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of file descriptors or similar: wait, do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (state, _) = watch::channel(FlowState::Open);
        let flow = Arc::new(Flow {
            state,
            role: Mutex::new(None),
            frozen_at: Mutex::new(None),
            node_closed_after: Mutex::new(None),
        });
        lock(&shared.flows).insert(id, flow.clone());
        let shared = shared.clone();
        tokio::spawn(async move {
            let target = ("127.0.0.1", shared.target);
            // The backing service down (a restart fault): the node's connection closes, as a
            // refused connection would.
            if let Ok(Ok(upstream)) =
                tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await
            {
                run_flow(client, upstream, &flow, shared.roles).await;
            }
            lock(&shared.flows).remove(&id);
        });
    }
}

async fn run_flow(
    client: TcpStream,
    upstream: TcpStream,
    flow: &Flow,
    roles: &'static [(&'static str, &'static str)],
) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let reset = {
        let up = pump(&mut cr, &mut uw, flow, Some(roles));
        let down = pump(&mut ur, &mut cw, flow, None);
        let mut state = flow.state.subscribe();
        tokio::select! {
            _ = async { tokio::join!(up, down) } => flow.is(FlowState::Reset),
            _ = state.wait_for(|s| *s == FlowState::Reset) => true,
        }
    };
    if reset {
        // RST, not FIN: the connection is gone, not closed in order. `forget`: a dropped write
        // half would send a FIN first.
        let _ = cr.as_ref().set_zero_linger();
        let _ = ur.as_ref().set_zero_linger();
        cw.forget();
        uw.forget();
    }
}

/// Copies one direction until EOF. While the flow is frozen, reads and drops. `roles` is given
/// for the direction from the node to the service, None for the other.
async fn pump(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    flow: &Flow,
    roles: Option<&'static [(&'static str, &'static str)]>,
) {
    let from_node = roles.is_some();
    let roles = roles.unwrap_or_default();
    let mut state = flow.state.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => {
                if flow.is(FlowState::Open) {
                    // An orderly end, passed on.
                    let _ = wr.shutdown().await;
                } else if from_node {
                    flow.node_closed();
                }
                return;
            }
        };
        if from_node && lock(&flow.role).is_none() {
            if let Some((_, role)) = roles.iter().find(|(p, _)| contains_ascii_ci(&buf[..n], p)) {
                *lock(&flow.role) = Some(role);
            }
        }
        if !flow.is(FlowState::Open) {
            continue; // swallowed by the dead path
        }
        tokio::select! {
            r = wr.write_all(&buf[..n]) => if r.is_err() { return },
            // A write blocked on a full peer must not outlive the freeze.
            _ = state.wait_for(|s| *s != FlowState::Open) => {}
        }
    }
}

fn contains_ascii_ci(hay: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The proxy itself, against an echo server: the chaos run's verdict on the half-open faults
/// rests on it freezing, labelling, noticing a node's close and resetting as described.
#[tokio::test]
async fn proxy_freezes_new_flows_pass_and_frozen_ones_are_reset() {
    use std::io::ErrorKind;

    // An echo server standing in for Redis.
    let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let echo_port = echo.local_addr().expect("echo addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = echo.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    const ROLES: &[(&str, &str)] = &[("SUBSCRIBE", "subscriber")];
    let proxy = TcpProxy::start(echo_port, ROLES).await.expect("proxy");
    let wait = Duration::from_secs(10);
    async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
        s.write_all(msg).await.expect("write");
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.expect("read");
        got
    }
    let connect = || TcpStream::connect(("127.0.0.1", proxy.port));
    let mut sub = connect().await.expect("connect");
    let mut other = connect().await.expect("connect");
    let mut closer = connect().await.expect("connect");
    for (s, msg) in [
        (&mut sub, &b"subscribe x"[..]),
        (&mut other, b"ping"),
        (&mut closer, b"ping"),
    ] {
        let got = tokio::time::timeout(wait, round_trip(s, msg)).await;
        assert_eq!(got.expect("echo through the proxy"), msg);
    }

    let frozen = proxy.freeze();
    // Frozen: a write is accepted, nothing comes back.
    sub.write_all(b"ping")
        .await
        .expect("a write to a frozen flow succeeds");
    let mut one = [0u8; 1];
    let silent = tokio::time::timeout(Duration::from_millis(500), sub.read(&mut one)).await;
    assert!(silent.is_err(), "a frozen flow answered: {silent:?}");
    // New connections go through.
    let mut fresh = connect().await.expect("connect");
    let got = tokio::time::timeout(wait, round_trip(&mut fresh, b"hello")).await;
    assert_eq!(
        got.expect("a new connection works during the freeze"),
        b"hello"
    );
    // The node gives up on one frozen flow: the proxy notices.
    drop(closer);
    let noticed = tokio::time::timeout(wait, async {
        while frozen
            .flows
            .iter()
            .all(|f| lock(&f.node_closed_after).is_none())
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        noticed.is_ok(),
        "the proxy did not see the node close a frozen flow"
    );

    let out = proxy.reset(frozen);
    assert_eq!(out.frozen, 3);
    assert_eq!(out.closed_by_node, 1);
    assert_eq!(out.by_role, vec![("other", 2, 1), ("subscriber", 1, 0)]);
    // Reset: the frozen flow ends with a RST, not an orderly close.
    let end = tokio::time::timeout(wait, sub.read(&mut one)).await;
    match end.expect("the reset reaches the node") {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        Ok(n) => panic!("a reset flow read {n} bytes instead of failing"),
    }
    // The flow opened during the freeze is untouched.
    let got = tokio::time::timeout(wait, round_trip(&mut fresh, b"still")).await;
    assert_eq!(got.expect("the fresh flow survives the reset"), b"still");
}
