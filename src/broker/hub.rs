//! A node's single subscriber: routes broker messages to the local listeners (user actors).
//!
//! With Redis it holds ONE pub/sub connection outside the pool, SUBSCRIBEs a channel when its first
//! local listener arrives and UNSUBSCRIBEs when the last one leaves. After the connection drops
//! it reconnects, resubscribes every channel still wanted, and tells every listener to `Resync`
//! (re-read from PostgreSQL whatever it may have missed while disconnected).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub enum HubMsg {
    /// A payload published on `channel`.
    Message {
        channel: Arc<str>,
        payload: Arc<str>,
    },
    /// The broker connection was (re)established: anything may have been missed before it.
    Resync,
}

type Listeners = HashMap<String, Vec<(u64, UnboundedSender<HubMsg>)>>;

pub struct Hub {
    routes: Mutex<Listeners>,
    /// Serialises SUBSCRIBE/UNSUBSCRIBE so their order on the wire matches the order of changes
    /// to `routes`; `None` while disconnected (the reconnect resubscribes from `routes`).
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
    connected: AtomicBool,
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub {
            routes: Mutex::new(HashMap::new()),
            sink: tokio::sync::Mutex::new(None),
            connected: AtomicBool::new(false),
        })
    }

    /// Whether the broker subscription is live (always true in single-node mode once started).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn mark_local(&self) {
        self.connected.store(true, Ordering::Relaxed);
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Listeners> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Routes `channel` to `tx` under `listener`. Returns once the broker confirmed the
    /// subscription (or immediately while disconnected: the reconnect will subscribe it and
    /// send `Resync`). Callers read PostgreSQL only after this returns.
    pub async fn listen(&self, channel: &str, listener: u64, tx: UnboundedSender<HubMsg>) {
        let mut sink = self.sink.lock().await;
        let first = {
            let mut routes = self.routes();
            let entry = routes.entry(channel.to_string()).or_default();
            entry.push((listener, tx));
            entry.len() == 1
        };
        if first {
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.subscribe(channel).await {
                    tracing::warn!(error = %e, channel, "SUBSCRIBE failed; the reconnect will retry");
                    *sink = None;
                }
            }
        }
    }

    pub async fn unlisten(&self, channel: &str, listener: u64) {
        let mut sink = self.sink.lock().await;
        let last = {
            let mut routes = self.routes();
            match routes.get_mut(channel) {
                Some(list) => {
                    list.retain(|(id, _)| *id != listener);
                    if list.is_empty() {
                        routes.remove(channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last {
            if let Some(s) = sink.as_mut() {
                if let Err(e) = s.unsubscribe(channel).await {
                    // Harmless: a dead connection is replaced, and the new one only subscribes
                    // what is still routed.
                    tracing::debug!(error = %e, channel, "UNSUBSCRIBE failed");
                    *sink = None;
                }
            }
        }
    }

    /// Hands a payload to every local listener of `channel`.
    pub fn deliver(&self, channel: &str, payload: Arc<str>) {
        let routes = self.routes();
        if let Some(list) = routes.get(channel) {
            let channel: Arc<str> = Arc::from(channel);
            for (_, tx) in list {
                let _ = tx.send(HubMsg::Message {
                    channel: channel.clone(),
                    payload: payload.clone(),
                });
            }
        }
    }

    fn broadcast(&self, msg: HubMsg) {
        let routes = self.routes();
        for list in routes.values() {
            for (_, tx) in list {
                let _ = tx.send(msg.clone());
            }
        }
    }

    pub fn channel_count(&self) -> usize {
        self.routes().len()
    }

    /// The Redis subscriber loop: connect, resubscribe, route, and start over when the
    /// connection ends. Runs until `shutdown` turns true.
    pub async fn run_redis(self: Arc<Self>, url: String, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.connect(&url).await {
                Ok(mut stream) => {
                    backoff = Duration::from_millis(100);
                    self.connected.store(true, Ordering::Relaxed);
                    self.broadcast(HubMsg::Resync);
                    loop {
                        tokio::select! {
                            msg = stream.next() => match msg {
                                Some(msg) => {
                                    let payload = String::from_utf8_lossy(msg.get_payload_bytes());
                                    self.deliver(msg.get_channel_name(), Arc::from(payload.as_ref()));
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    self.connected.store(false, Ordering::Relaxed);
                    *self.sink.lock().await = None;
                    metrics::counter!("notifyd_errors_total", "kind" => "redis_subscriber_disconnect").increment(1);
                    tracing::warn!("redis subscriber connection lost; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis subscriber cannot connect; retrying in {backoff:?}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn connect(&self, url: &str) -> anyhow::Result<redis::aio::PubSubStream> {
        let client = redis::Client::open(url)?;
        let pubsub =
            tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub()).await??;
        let (mut sink, stream) = pubsub.split();
        let mut guard = self.sink.lock().await;
        let channels: Vec<String> = self.routes().keys().cloned().collect();
        for chunk in channels.chunks(1000) {
            sink.subscribe(chunk).await?;
        }
        *guard = Some(sink);
        Ok(stream)
    }
}
