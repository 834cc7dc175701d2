//! Wiring a node together: pool, broker, hub, relay, gateway, HTTP server. Tests build the same
//! `Application` on port 0 against a fresh database.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App};
use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::Listener;
use crate::auth::jwt::JwtKeys;
use crate::auth::service::ServiceKeys;
use crate::broker::{self, Broker, Hub};
use crate::config::Settings;
use crate::db;
use crate::gateway::Gateway;
use crate::outbox::{Housekeeper, Relay, Waker};
use crate::presence::Presence;
use crate::state::AppState;

/// How long an idle HTTP/1.1 connection is kept open. Longer than the idle timeout of the
/// proxies in front (nginx's upstream `keepalive_timeout 60s` in docs/deploy, AWS ALB's 60 s):
/// when the node closed first (actix's default is 5 s), a proxy reusing the connection at that
/// instant got a reset and answered the caller 502 for a POST it could not retry (chaos harness).
pub const HTTP_KEEP_ALIVE: Duration = Duration::from_secs(75);

pub struct Application {
    port: u16,
    server: actix_web::dev::Server,
    service_port: Option<u16>,
    service_server: Option<actix_web::dev::Server>,
    stopper: Stopper,
    tasks: Vec<JoinHandle<()>>,
}

/// Stops a running node the way SIGTERM does: sockets closed with 1012, background tasks and
/// the HTTP server stopped.
#[derive(Clone)]
pub struct Stopper {
    state: AppState,
    shutdown: Arc<watch::Sender<bool>>,
    server: actix_web::dev::ServerHandle,
    service: Option<actix_web::dev::ServerHandle>,
}

impl Stopper {
    pub async fn stop(&self) {
        self.state.gateway.shutdown();
        self.state.topics.close_anonymous();
        // Let the writers flush their close frames.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = self.shutdown.send(true);
        let service = async {
            if let Some(service) = &self.service {
                service.stop(true).await;
            }
        };
        futures_util::future::join(self.server.stop(true), service).await;
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }
}

impl Application {
    /// A node, in the order its parts depend on each other: the database, the broker, the
    /// background tasks that feed deliveries, the gateway and the topic router, the shared
    /// state, then the HTTP listeners.
    pub async fn build(
        settings: Settings,
        metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> anyhow::Result<Self> {
        let pool = prepare_database(&settings).await?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut bg = Background {
            tasks: vec![],
            shutdown: shutdown_rx,
        };
        let hub = Hub::new();
        let (redis, broker) = start_broker(&settings, &hub, &mut bg).await?;
        let waker = Waker::new();
        let presence = Presence::new(
            settings.node_id.clone(),
            settings.redis_prefix.clone(),
            redis.clone(),
        );
        bg.spawn(|stop| presence.clone().run(stop));
        bg.spawn(|stop| waker.clone().run_notifier(pool.clone(), stop));
        // Every node, leading or not: so the backlog's age is reported when no relay leads.
        bg.spawn(|stop| {
            crate::outbox::backlog::run(
                pool.clone(),
                settings.relay_partitions,
                settings.db_request_timeout,
                stop,
            )
        });
        if settings.relay_enabled {
            start_relay(&settings, broker, &waker, &mut bg);
        }
        let replica = start_replica(&settings, &pool, &mut bg)?;
        let workers = settings.http_workers.unwrap_or_else(default_http_workers);
        metrics::gauge!("notifyd_http_workers").set(workers as f64);
        let gateway = new_gateway(&settings, workers)?;
        let settings = Arc::new(settings);
        let (topics, shards) = crate::topics::Router::new(
            hub.clone(),
            settings.clone(),
            gateway.next_id(),
            crate::topics::RetainedStore {
                pool: pool.clone(),
                permits: gateway.db_commands.clone(),
            },
        );
        for shard in shards {
            bg.spawn(|stop| topics.clone().run_shard(shard, stop));
        }
        // Announcements: every node works on them (one at a time each, see announce::batch).
        let announcements = crate::announce::Wake::default();
        bg.spawn(|stop| {
            crate::announce::worker::Worker {
                pool: pool.clone(),
                batch: settings.broadcast_batch,
                timeout: settings.db_request_timeout,
                relay: waker.clone(),
                wake: announcements.clone(),
                local: crate::inbox::local::LocalDelivery {
                    hub: hub.clone(),
                    settings: settings.clone(),
                },
            }
            .run(stop)
        });
        // Web Push: every node runs the worker (pending pushes are claimed one node each).
        let push = crate::push::Push::from_settings(&settings)?;
        if let Some(push) = &push {
            bg.spawn(|stop| {
                crate::push::worker::Worker {
                    push: push.clone(),
                    pool: pool.clone(),
                    delay: settings.push_delay,
                    timeout: settings.db_request_timeout,
                }
                .run(stop)
            });
        }
        // Snooze wake-ups: every node looks for due ones (inbox::snooze), so any survivor does.
        bg.spawn(|stop| {
            crate::inbox::snooze::SnoozeWaker {
                pool: pool.clone(),
                timeout: settings.db_request_timeout,
                relay: waker.clone(),
                local: crate::inbox::local::LocalDelivery {
                    hub: hub.clone(),
                    settings: settings.clone(),
                },
            }
            .run(stop)
        });
        let state = AppState {
            push,
            jwt: JwtKeys::new(&settings.jwt_secret),
            tickets: crate::auth::ticket::TicketKeys::new(&settings.jwt_secret),
            limits: Arc::new(crate::ratelimit::RateLimits::default()),
            settings,
            pool,
            replica,
            redis,
            hub,
            waker,
            gateway,
            topics,
            announcements,
            presence,
            metrics,
        };
        bg.spawn(|stop| state.gateway.clone().run_audit(state.clone(), stop));
        let http = serve_http(&state, workers)?;
        let stopper = Stopper {
            state,
            shutdown: Arc::new(shutdown_tx),
            server: http.server.handle(),
            service: http.service.as_ref().map(|(_, s)| s.handle()),
        };
        let (service_port, service_server) = http.service.unzip();
        Ok(Application {
            port: http.port,
            server: http.server,
            service_port,
            service_server,
            stopper,
            tasks: bg.tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The service listener's port (`NOTIFYD_SERVICE_BIND`), if there is one.
    pub fn service_port(&self) -> Option<u16> {
        self.service_port
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Serves until stopped (by a `Stopper`), then waits for the background tasks.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let service = async {
            match self.service_server {
                Some(service) => service.await,
                None => Ok(()),
            }
        };
        let (server, service) = futures_util::future::join(self.server, service).await;
        server?;
        service?;
        let _ = self.stopper.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        Ok(())
    }
}

/// The node's background tasks, each stopped by the shutdown signal it is given.
struct Background {
    tasks: Vec<JoinHandle<()>>,
    shutdown: watch::Receiver<bool>,
}

impl Background {
    fn spawn<F>(&mut self, task: impl FnOnce(watch::Receiver<bool>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.push(tokio::spawn(task(self.shutdown.clone())));
    }
}

/// Migrations, the event log's partitions, then the pool.
async fn prepare_database(settings: &Settings) -> anyhow::Result<db::DbPool> {
    // Migrations need a session of their own (their lock, their statements): never a pooler.
    let applied = db::migrate(settings.direct_database_url()).await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    prepare_event_log(settings).await;
    db::pool_with(
        &settings.database_url,
        settings.db_pool_size,
        db::Limits::from_settings(settings),
        settings.pooler(),
    )
}

/// The replica's pool and its lag probe, when `NOTIFYD_DATABASE_REPLICA_URL` is set. It is
/// reached the way `DATABASE_URL` is (`NOTIFYD_DATABASE_POOLER`); a bad URL or CA file stops
/// start-up, a replica that is down does not.
fn start_replica(
    settings: &Settings,
    primary: &db::DbPool,
    bg: &mut Background,
) -> anyhow::Result<Option<Arc<db::replica::Replica>>> {
    let Some(url) = &settings.database_replica_url else {
        return Ok(None);
    };
    let replica = Arc::new(db::replica::Replica::new(
        url,
        settings.db_pool_size,
        &db::Limits::from_settings(settings),
        settings.pooler(),
        settings.replica_max_lag,
    )?);
    let primary = primary.clone();
    bg.spawn(|stop| replica.clone().run_probe(primary, stop));
    Ok(Some(replica))
}

/// Redis when `REDIS_URL` is set (its pool, and the hub's subscriber task), else the
/// in-process broker of a single node.
/// A `rediss` target's certificate is checked first (see `broker::check_tls`).
async fn start_broker(
    settings: &Settings,
    hub: &Arc<Hub>,
    bg: &mut Background,
) -> anyhow::Result<(Option<broker::Redis>, Broker)> {
    let redis = match &settings.redis_url {
        Some(url) => {
            let target = broker::RedisTarget::parse(url, settings.redis_ca_file.as_deref())?;
            let redis = broker::Redis::connect(&target).await?;
            broker::check_tls(&redis, &target).await?;
            bg.spawn(|stop| hub.clone().run_redis(target, stop));
            Some(redis)
        }
        None => {
            tracing::warn!("REDIS_URL is not set: single-node mode with the in-process broker");
            hub.mark_local();
            None
        }
    };
    let broker = match &redis {
        Some(p) => Broker::Redis(p.clone()),
        None => Broker::Local(hub.clone()),
    };
    Ok((redis, broker))
}

/// The relay (outbox to broker) and, apart from its publish loop (own task and connection),
/// the pruning.
fn start_relay(settings: &Settings, broker: Broker, waker: &Waker, bg: &mut Background) {
    let relay = Relay {
        database_url: settings.direct_database_url().to_string(),
        broker,
        waker: waker.clone(),
        settings: settings.clone(),
    };
    bg.spawn(|stop| relay.run(stop));
    let housekeeper = Housekeeper {
        settings: settings.clone(),
        waker: waker.clone(),
    };
    bg.spawn(|stop| housekeeper.run(stop));
}

/// The gateway, admitting at most `ws_max_joining` handshakes at once (by default
/// `WS_JOINING_PER_WORKER` per HTTP worker).
fn new_gateway(settings: &Settings, workers: usize) -> anyhow::Result<Arc<Gateway>> {
    let max_joining = settings
        .ws_max_joining
        .unwrap_or(WS_JOINING_PER_WORKER * workers);
    metrics::gauge!("notifyd_ws_max_joining").set(max_joining as f64);
    // The catch-up batcher's own connections, beside the pool (see gateway::catch_up).
    let catch_up_pool = db::pool_with(
        &settings.database_url,
        crate::gateway::catch_up::BATCH_CONCURRENCY,
        db::Limits::from_settings(settings),
        settings.pooler(),
    )?;
    let runtime = tokio::runtime::Handle::current();
    let catch_up = crate::gateway::catch_up::CatchUp::new(
        runtime.clone(),
        catch_up_pool,
        settings.db_request_timeout,
    );
    Ok(Arc::new(Gateway::new(
        runtime,
        settings.db_pool_size,
        catch_up,
        crate::gateway::admission::Admission::new(
            max_joining,
            settings.ws_join_queue,
            settings.ws_join_wait,
        ),
    )))
}

/// The HTTP servers of a node: the public listener and, with `NOTIFYD_SERVICE_BIND`, the
/// service listener.
struct Http {
    port: u16,
    server: actix_web::dev::Server,
    service: Option<(u16, actix_web::dev::Server)>,
}

/// Binds and starts the HTTP listeners over `state`.
fn serve_http(state: &AppState, workers: usize) -> anyhow::Result<Http> {
    let data = web::Data::new(state.clone());
    // What the auth extractors read, apart from the state (auth::user, auth::service).
    let jwt = web::Data::new(state.jwt.clone());
    let service_keys = web::Data::new(ServiceKeys(state.settings.service_keys.clone()));
    let dev = state.settings.dev;
    // A deep accept queue: a reconnect storm's SYNs are queued, not dropped (see
    // http_listener).
    let listener = crate::http_listener::bind(&state.settings.bind)
        .with_context(|| format!("binding {}", state.settings.bind))?;
    let port = listener.local_addr()?.port();
    let cors = crate::api::cors::CorsPolicy::new(state.settings.allowed_origins.as_deref());
    // The app factory of one listener (called once per worker): the same routes on both,
    // but the internal surfaces only where `routes` serves them.
    let app = move |routes: Listener| {
        let (data, cors) = (data.clone(), cors.clone());
        let (jwt, service_keys) = (jwt.clone(), service_keys.clone());
        move || {
            let app = App::new()
                .app_data(data.clone())
                .app_data(jwt.clone())
                .app_data(service_keys.clone())
                // A span per request and the access line (without the query string: browsers
                // send user tokens as `?token=`).
                .wrap(actix_web::middleware::from_fn(
                    crate::api::request_span::trace,
                ))
                .configure(|c| crate::api::configure(c, &cors, routes));
            let app = if dev {
                app.configure(|c| crate::web::configure(c, &cors))
            } else {
                app.configure(|c| crate::web::configure_client(c, &cors))
            };
            app.default_service(web::to(crate::api::not_found))
        }
    };
    let serve = |listener: std::net::TcpListener, workers: usize, routes: Listener| {
        crate::http_server::serve(
            listener,
            crate::http_server::Options {
                workers,
                keep_alive: HTTP_KEEP_ALIVE,
                on_connect: crate::gateway::conn::on_connect,
            },
            app(routes),
        )
    };
    let public = match state.settings.service_bind {
        Some(_) => Listener::Public,
        None => Listener::Only,
    };
    let server = serve(listener, workers, public)?;
    // The service listener: the same routes on an HTTP worker of its own, so internal
    // services' calls never wait in a queue behind a reconnect storm's handshakes (on the
    // public listener's workers); see `SERVICE_WORKERS`. The internal surfaces (`/metrics`,
    // `/readyz`) are then served here only (`Listener`).
    let service = match &state.settings.service_bind {
        None => None,
        Some(addr) => {
            let listener = crate::http_listener::bind(addr)
                .with_context(|| format!("binding NOTIFYD_SERVICE_BIND {addr}"))?;
            let port = listener.local_addr()?.port();
            Some((port, serve(listener, SERVICE_WORKERS, Listener::Service)?))
        }
    };
    Ok(Http {
        port,
        server,
        service,
    })
}

/// HTTP workers per CPU when `NOTIFYD_HTTP_WORKERS` is unset: one, actix's own default. Each
/// worker is a single-threaded runtime running every connection it accepted on one queue. More
/// workers than CPUs let the operating system time-slice a REST call's worker against workers
/// busy with a reconnect storm's handshakes, but every event fanned out to sockets then wakes
/// more threads: on 2 CPUs with 8 workers a 10,000-subscriber topic burst fell from ~670k to
/// ~150k frames/s (4 workers: ~460k). A storm's REST latency is bounded instead by admitting
/// fewer handshakes at once (`WS_JOINING_PER_WORKER`). docs/benchmarks.md has the runs.
pub const HTTP_WORKERS_PER_CPU: usize = 1;

/// HTTP workers of the service listener (`NOTIFYD_SERVICE_BIND`): one. Internal services'
/// calls are few beside the sockets' traffic; what they need is a worker whose queue a storm
/// of WebSocket handshakes never fills (measured in docs/benchmarks.md).
pub const SERVICE_WORKERS: usize = 1;

/// Handshakes in flight per HTTP worker when `NOTIFYD_WS_MAX_JOINING` is unset. A worker runs
/// a REST call and every handshake it holds on one queue, so the call waits behind the
/// handshakes' turns: on a 2-worker survivor of a 15,000-client storm, POST p99 was 204 ms with
/// 256 handshakes in flight and 37–55 ms with 64 (4 workers: 26.6 ms with 128). More wait for a
/// turn (`gateway::admission`), so a small cap does not slow everyone getting back in.
/// Counted per worker so that a node with more cores takes proportionally more.
pub const WS_JOINING_PER_WORKER: usize = 32;

pub fn default_http_workers() -> usize {
    HTTP_WORKERS_PER_CPU
        * std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// The relay alone (`notifyd relay`): publishes to Redis until SIGTERM/SIGINT.
pub async fn run_relay(settings: Settings) -> anyhow::Result<()> {
    let url = settings
        .redis_url
        .clone()
        .context("`notifyd relay` needs REDIS_URL (single-node mode relays inside `serve`)")?;
    db::migrate(settings.direct_database_url()).await?;
    prepare_event_log(&settings).await;
    let pool = db::pool_with(
        &settings.database_url,
        2,
        db::Limits::from_settings(&settings),
        settings.pooler(),
    )?;
    let target = broker::RedisTarget::parse(&url, settings.redis_ca_file.as_deref())?;
    let redis = broker::Redis::connect(&target).await?;
    broker::check_tls(&redis, &target).await?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // With an internal listener: /healthz and /metrics (what it leads, every partition's
    // backlog, as a node exports them), so a relay run apart is watched like a node.
    let surfaces = match &settings.service_bind {
        Some(addr) => {
            let metrics = crate::telemetry::init_metrics();
            let backlog = tokio::spawn(crate::outbox::backlog::run(
                pool.clone(),
                settings.relay_partitions,
                settings.db_request_timeout,
                shutdown_rx.clone(),
            ));
            Some((relay_surfaces(addr, metrics)?, backlog))
        }
        None => None,
    };
    let waker = Waker::new();
    let housekeeper = Housekeeper {
        settings: settings.clone(),
        waker: waker.clone(),
    };
    let relay = Relay {
        database_url: settings.direct_database_url().to_string(),
        broker: Broker::Redis(redis),
        waker: waker.clone(),
        settings,
    };
    let task = tokio::spawn(relay.run(shutdown_rx.clone()));
    let housekeeping = tokio::spawn(housekeeper.run(shutdown_rx.clone()));
    let notifier = tokio::spawn(waker.run_notifier(pool, shutdown_rx));
    crate::telemetry::shutdown_signal().await;
    let _ = shutdown_tx.send(true);
    let _ = task.await;
    let _ = housekeeping.await;
    let _ = notifier.await;
    if let Some((server, backlog)) = surfaces {
        server.stop(true).await;
        let _ = backlog.await;
    }
    Ok(())
}

/// `notifyd relay`'s internal listener (`NOTIFYD_SERVICE_BIND`): `/healthz` and `/metrics` on
/// one worker; nothing else is served there.
fn relay_surfaces(
    addr: &str,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> anyhow::Result<actix_web::dev::ServerHandle> {
    let listener = crate::http_listener::bind(addr)
        .with_context(|| format!("binding NOTIFYD_SERVICE_BIND {addr}"))?;
    let metrics = web::Data::new(metrics);
    let server = actix_web::HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .route("/healthz", web::get().to(crate::api::ops::healthz))
            .route(
                "/metrics",
                web::get().to(
                    |m: web::Data<Option<metrics_exporter_prometheus::PrometheusHandle>>| async move {
                        actix_web::HttpResponse::Ok()
                            .content_type("text/plain; version=0.0.4")
                            .body(m.as_ref().as_ref().map(|h| h.render()).unwrap_or_default())
                    },
                ),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    tokio::spawn(server);
    Ok(handle)
}

/// Right after the migrations: the event log's partitions for now and the next ranges. Not
/// fatal: until the housekeeper's next round, writes without a partition land in the DEFAULT
/// partition (and are moved out later).
async fn prepare_event_log(settings: &Settings) {
    match crate::outbox::housekeeping::create_partitions_ahead(settings).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(created = n, "event log partitions created ahead"),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "could not create event log partitions ahead")
        }
    }
}
