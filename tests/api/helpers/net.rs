//! `Cuttable`, a TCP proxy a test cuts or freezes to make Redis or PostgreSQL unreachable (or
//! silent) for one node.

/// A TCP proxy in front of Redis or PostgreSQL that a test can cut, freeze and restore, to make
/// the server unreachable (or silent) for one node without touching the shared server.
///
/// - `cut`: every proxied connection is closed and new ones are refused (a clean outage).
/// - `freeze`: every proxied connection stops forwarding in both directions WITHOUT being closed,
///   and new connections are accepted but never forwarded either: a half-open peer that
///   swallows requests and never answers (a dead host, a black-holing firewall).
/// - `restore`: new connections work again. Connections frozen earlier stay frozen for good
///   (their bytes are gone, as on a real dead path), so only a client that gives up on them and
///   reconnects recovers.
pub struct Cuttable {
    pub port: u16,
    mode: std::sync::Arc<tokio::sync::watch::Sender<ProxyMode>>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    forwarding: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// One connection the proxy forwards, counted in `Cuttable::forwarding` until it stops
/// forwarding (both its sockets closed, or frozen).
struct Forwarding(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Forwarding {
    fn new(count: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Forwarding(count.clone())
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    On,
    Cut,
    Frozen,
}

impl Cuttable {
    pub async fn start(target: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (mode, _) = tokio::sync::watch::channel(ProxyMode::On);
        let mode = std::sync::Arc::new(mode);
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let forwarding = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let target = target.to_string();
        let mode2 = mode.clone();
        let accepted2 = accepted.clone();
        let forwarding2 = forwarding.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                accepted2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut rx = mode2.subscribe();
                let now = *rx.borrow();
                match now {
                    ProxyMode::Cut => drop(inbound),
                    // Accepted and then ignored: the client's connect succeeds, nothing answers.
                    ProxyMode::Frozen => {
                        tokio::spawn(hold_silently(inbound, None));
                    }
                    ProxyMode::On => {
                        let target = target.clone();
                        let counted = Forwarding::new(&forwarding2);
                        tokio::spawn(async move {
                            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                                return;
                            };
                            proxy_one(inbound, outbound, &mut rx, counted).await;
                        });
                    }
                }
            }
        });
        Cuttable {
            port,
            mode,
            accepted,
            forwarding,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A PostgreSQL URL through this proxy for the database `db_url` names.
    pub fn pg_url(&self, db_url: &str) -> String {
        let name = &db_url[db_url.rfind('/').expect("database name") + 1..];
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, name)
    }

    /// Drops every proxied connection and refuses new ones.
    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    /// Stops forwarding on every connection, old and new, without closing any (half-open).
    pub fn freeze(&self) {
        self.mode.send_replace(ProxyMode::Frozen);
    }

    pub fn restore(&self) {
        self.mode.send_replace(ProxyMode::On);
    }

    /// How many connections the proxy forwards now: after `cut`, 0 once every proxied
    /// connection is closed on both sides.
    pub fn forwarding(&self) -> usize {
        self.forwarding.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many connections the proxy has accepted so far (reconnects show up here).
    pub fn accepted(&self) -> usize {
        std::sync::atomic::AtomicUsize::load(&self.accepted, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Forwards both ways until either side closes or the proxy is cut (close both) or frozen (stop
/// forwarding and keep both sockets open, unread, forever: the half-open case).
async fn proxy_one(
    mut inbound: tokio::net::TcpStream,
    mut outbound: tokio::net::TcpStream,
    rx: &mut tokio::sync::watch::Receiver<ProxyMode>,
    counted: Forwarding,
) {
    let mode = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => ProxyMode::Cut,
        m = rx.wait_for(|m| *m != ProxyMode::On) => m.map(|m| *m).unwrap_or(ProxyMode::Cut),
    };
    if mode == ProxyMode::Frozen {
        drop(counted);
        hold_silently(inbound, Some(outbound)).await;
    } else {
        // Both sockets closed before the count goes down.
        drop((inbound, outbound));
        drop(counted);
    }
}

/// Keeps the sockets open without reading or writing, for the rest of the test process.
async fn hold_silently(inbound: tokio::net::TcpStream, outbound: Option<tokio::net::TcpStream>) {
    let _keep = (inbound, outbound);
    std::future::pending::<()>().await;
}

/// Two nodes of one fresh cluster: A reaches Redis only through the returned proxy (which the
/// test cuts or freezes) and relays nothing; B reaches Redis directly and relays.
pub async fn nodes_with_a_cuttable_redis(
    db: &super::TestDb,
) -> (Cuttable, super::TestApp, super::TestApp) {
    use super::{new_prefix, spawn_app, Opts};
    let prefix = new_prefix();
    let proxy = Cuttable::start("127.0.0.1:6379").await;
    let a = spawn_app(db, Opts::behind_redis(&prefix, proxy.url())).await;
    let b = spawn_app(db, Opts::in_cluster(&prefix)).await;
    (proxy, a, b)
}
