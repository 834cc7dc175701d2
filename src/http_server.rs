//! The node's HTTP server: the actix-web `App` on actix-server workers, as actix-web's
//! `HttpServer` would serve it, with one step added in front of every new connection: its
//! worker's intake (`gateway::intake`), which starts a REST call at once and lets WebSocket
//! handshakes in a few per round of the worker's scheduler. `HttpServer` has no place for such a
//! step, so the server is put together here from the same parts and the same settings
//! (timeouts, `TCP_NODELAY` left as the system's, graceful shutdown of keep-alive connections).

use std::any::Any;
use std::fmt;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use actix_http::body::MessageBody;
use actix_http::{Extensions, HttpService, Protocol, Request, Response};
use actix_server::Server;
use actix_service::ServiceFactoryExt as _;
use actix_service::{fn_service, map_config, IntoServiceFactory, Service, ServiceFactory};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;

use crate::gateway::intake::Intake;

/// What the server is run with.
pub struct Options {
    pub workers: usize,
    pub keep_alive: Duration,
    /// Called with every new connection (its `TcpStream`) before its first request.
    pub on_connect: fn(&dyn Any, &mut Extensions),
}

/// actix-web's own defaults for `HttpServer`, kept.
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// Serves `app` (a factory called once per worker) on `listener` until stopped through the
/// returned server's handle. Signals are left to the caller.
pub fn serve<F, I, S, B>(listener: TcpListener, options: Options, app: F) -> std::io::Result<Server>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    <S::Service as Service<Request>>::Future: 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    let addr = listener.local_addr()?;
    let builder = actix_server::Server::build();
    let shutdown = builder.graceful_shutdown_signal();
    let Options {
        workers,
        keep_alive,
        on_connect,
    } = options;
    let builder = builder
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .listen(format!("notifyd-http-{addr}"), listener, move || {
            let shutdown = shutdown.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let signal = shutdown.clone();
                    async move { signal.notified().await }
                })
                .keep_alive(keep_alive)
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .local_addr(addr)
                .on_connect_ext(move |io: &TcpStream, ext: &mut Extensions| {
                    on_connect(io as &dyn Any, ext)
                })
                .finish(map_config(
                    app().into_factory().map_err(|e| e.into().error_response()),
                    // The app never asks for its host or address (no URL generation, no
                    // `ConnectionInfo`): the defaults stand in for what `HttpServer` would pass.
                    |_| AppConfig::default(),
                ));
            // One intake per worker: the factory is called on each worker's thread.
            let intake = Rc::new(Intake::default());
            fn_service(move |io: TcpStream| {
                let intake = intake.clone();
                async move {
                    intake.enter(&io).await;
                    let peer = io.peer_addr().ok();
                    Ok((io, Protocol::Http1, peer))
                }
            })
            .and_then(http)
        })?;
    Ok(builder.run())
}
