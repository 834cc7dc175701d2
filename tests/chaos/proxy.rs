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
//! While frozen the proxy keeps reading both sides and drops the bytes (a black hole: the
//! sender's kernel sees its segments accepted), and notes when the node's side closes the
//! connection: that is the node noticing the dead peer on its own.

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

/// What happened to the frozen flows by the time they were reset.
pub(crate) struct FreezeOutcome {
    pub(crate) frozen: usize,
    /// Flows whose node side closed during the freeze, with the longest time it took.
    pub(crate) closed_by_node: usize,
    pub(crate) slowest_close: Option<Duration>,
}

impl TcpProxy {
    pub(crate) async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
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
        };
        for f in &frozen.flows {
            if let Some(d) = *lock(&f.node_closed_after) {
                outcome.closed_by_node += 1;
                outcome.slowest_close = Some(outcome.slowest_close.map_or(d, |s| s.max(d)));
            }
            f.state.send_replace(FlowState::Reset);
        }
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
                run_flow(client, upstream, &flow).await;
            }
            lock(&shared.flows).remove(&id);
        });
    }
}

async fn run_flow(client: TcpStream, upstream: TcpStream, flow: &Flow) {
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let reset = {
        let up = pump(&mut cr, &mut uw, flow, true);
        let down = pump(&mut ur, &mut cw, flow, false);
        let mut state = flow.state.subscribe();
        tokio::select! {
            _ = async { tokio::join!(up, down) } => flow.is(FlowState::Reset),
            _ = state.wait_for(|s| *s == FlowState::Reset) => true,
        }
    };
    if reset {
        // RST, not FIN: the connection is gone, not closed in order.
        let _ = cr.as_ref().set_zero_linger();
        let _ = ur.as_ref().set_zero_linger();
    }
}

/// Copies one direction until EOF. While the flow is frozen, reads and drops.
async fn pump(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, flow: &Flow, from_node: bool) {
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
