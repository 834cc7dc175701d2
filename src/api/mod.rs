//! HTTP routes. Handlers parse and authorise, call `inbox`, and wake the relay after a commit;
//! they never build SQL.

pub mod bodies;
pub mod broadcasts;
pub mod cors;
pub mod inbox_states;
pub mod me;
pub mod messages;
pub mod methods;
pub mod openapi;
pub mod ops;
pub mod preferences;
pub mod presence;
pub mod push;
pub mod request_span;
pub mod tickets;
pub mod topics;
pub mod users;

use actix_web::dev::HttpServiceFactory;
use actix_web::error::{JsonPayloadError, PayloadError};
use actix_web::http::Method;
use actix_web::middleware::from_fn;
use actix_web::{web, Route};
use futures_util::StreamExt;

use crate::error::ApiError;
use cors::CorsPolicy;
use methods::{get, get_put, only, DELETE, GET, GET_ONLY, GET_PUT, POST};

/// Body limit of the user API's JSON bodies (`{"ids": [...]}`: at most 1,000 ids of 36
/// characters, under 40 KiB). The service API has its own (`NOTIFYD_MAX_BODY_BYTES`, 64 KiB for
/// topic events).
pub const USER_BODY_LIMIT: usize = 64 * 1024;

/// Who calls a route: decides its CORS (only the user API answers it) here and its security
/// scheme in the OpenAPI document (`openapi.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No credentials: health, readiness, metrics, the OpenAPI document.
    Anyone,
    /// An internal service: `Authorization: Bearer <service key>` (contract §3).
    Service,
    /// A user: `Authorization: Bearer <user JWT>` (contract §4).
    User,
    /// A browser page without credentials (the Web Push public key): CORS as the user API
    /// answers it, no security scheme.
    Browser,
}

/// One REST route: its path, the methods it answers (others: 405 with `Allow`), its caller and
/// its handler. `configure` registers exactly these (and `/ws`), and a test checks that the
/// OpenAPI document describes exactly these, so the two cannot drift apart.
pub struct Endpoint {
    pub path: &'static str,
    pub allow: &'static [Method],
    pub caller: Caller,
    /// An internal surface (contract §7): for operators' scrapers and probes, not the internet.
    /// Served on the service listener only when there is one (`Listener`).
    pub internal: bool,
    route: fn() -> Route,
}

const fn endpoint(
    path: &'static str,
    allow: &'static [Method],
    caller: Caller,
    route: fn() -> Route,
) -> Endpoint {
    Endpoint {
        path,
        allow,
        caller,
        internal: false,
        route,
    }
}

/// An internal surface: `GET` for anyone who can reach it (see `Endpoint::internal`).
const fn internal(path: &'static str, route: fn() -> Route) -> Endpoint {
    Endpoint {
        internal: true,
        ..endpoint(path, GET, Caller::Anyone, route)
    }
}

/// The listener a set of routes is served on. What the node's metrics say (users online, the
/// backlog, services by name) and its readiness are for the operator's scrapers and probes: once
/// internal services have a listener of their own (`NOTIFYD_SERVICE_BIND`, on an address browsers
/// cannot reach), these stay off the public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `NOTIFYD_BIND` with no service listener beside it: every route, as always.
    Only,
    /// `NOTIFYD_BIND` beside a service listener: every route but the internal ones (`404`).
    Public,
    /// `NOTIFYD_SERVICE_BIND`: every route.
    Service,
}

impl Listener {
    pub fn serves_internal(self) -> bool {
        self != Listener::Public
    }
}

/// Every REST route, in registration order (a literal path before a `{param}` one it overlaps).
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("/healthz", GET, Caller::Anyone, || get().to(ops::healthz)),
    internal("/readyz", || get().to(ops::readyz)),
    internal("/metrics", || get().to(ops::metrics)),
    endpoint("/api-docs/openapi.json", GET, Caller::Anyone, || {
        get().to(openapi::openapi)
    }),
    // The busiest route comes before the first `{param}` one: actix tries routes in order and
    // matches a `{param}` pattern with a regex (two regex runs were ~5% of a single-message
    // POST's instructions, callgrind). It overlaps no route before it.
    endpoint("/api/v1/messages", POST, Caller::Service, || {
        web::post().to(messages::create)
    }),
    endpoint("/api/v1/me/messages", GET, Caller::User, || {
        get().to(me::list)
    }),
    endpoint("/api/v1/me/unread-count", GET, Caller::User, || {
        get().to(me::unread_count)
    }),
    endpoint("/api/v1/me/changes", GET, Caller::User, || {
        get().to(me::changes)
    }),
    endpoint("/api/v1/me/messages/read", POST, Caller::User, || {
        web::post().to(me::read)
    }),
    endpoint("/api/v1/me/messages/read-all", POST, Caller::User, || {
        web::post().to(me::read_all)
    }),
    endpoint("/api/v1/me/messages/seen-all", POST, Caller::User, || {
        web::post().to(me::seen_all)
    }),
    endpoint("/api/v1/me/tickets", POST, Caller::User, || {
        web::post().to(tickets::create)
    }),
    endpoint("/api/v1/me/received", POST, Caller::User, || {
        web::post().to(push::received)
    }),
    endpoint("/api/v1/push/key", GET, Caller::Browser, || {
        get().to(push::key)
    }),
    endpoint("/api/v1/me/push-subscriptions", POST, Caller::User, || {
        web::post().to(push::subscribe)
    }),
    endpoint(
        "/api/v1/me/push-subscriptions/{id}",
        DELETE,
        Caller::User,
        || web::delete().to(push::unsubscribe),
    ),
    // Inbox states (contract §10), before `/api/v1/me/messages/{id}`, which they overlap.
    endpoint("/api/v1/me/messages/unread", POST, Caller::User, || {
        web::post().to(inbox_states::unread)
    }),
    endpoint("/api/v1/me/messages/archive", POST, Caller::User, || {
        web::post().to(inbox_states::archive)
    }),
    endpoint("/api/v1/me/messages/unarchive", POST, Caller::User, || {
        web::post().to(inbox_states::unarchive)
    }),
    endpoint("/api/v1/me/messages/snooze", POST, Caller::User, || {
        web::post().to(inbox_states::snooze)
    }),
    // (end of inbox states)
    endpoint("/api/v1/me/preferences", GET_PUT, Caller::User, || {
        get_put().to(preferences::by_method)
    }),
    endpoint("/api/v1/me/send", POST, Caller::User, || {
        web::post().to(me::send)
    }),
    endpoint("/api/v1/me/messages/{id}", DELETE, Caller::User, || {
        web::delete().to(me::delete)
    }),
    endpoint("/api/v1/messages/{id}", DELETE, Caller::Service, || {
        web::delete().to(messages::retract)
    }),
    endpoint("/api/v1/broadcasts", POST, Caller::Service, || {
        web::post().to(broadcasts::create)
    }),
    endpoint("/api/v1/broadcasts/{id}", GET, Caller::Service, || {
        get().to(broadcasts::show)
    }),
    endpoint(
        "/api/v1/topics/{topic}/events",
        POST,
        Caller::Service,
        || web::post().to(topics::publish),
    ),
    endpoint("/api/v1/users/{id}", DELETE, Caller::Service, || {
        web::delete().to(users::erase)
    }),
    endpoint("/api/v1/users/{id}/presence", GET, Caller::Service, || {
        get().to(presence::user)
    }),
    endpoint("/api/v1/presence", GET, Caller::Service, || {
        get().to(presence::cluster)
    }),
];

/// Every route `listener` serves, each with the methods it answers (others: 405 with `Allow`).
/// Only the user API answers CORS; the service API never does. A route a listener does not serve
/// is not registered there: an unknown path (`404` with the error body).
pub fn configure(cfg: &mut web::ServiceConfig, cors: &CorsPolicy, listener: Listener) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(USER_BODY_LIMIT)
            // Any content type is read as JSON, as on the service API: otherwise an over-limit
            // body sent as text/plain would be a 400 about its type instead of a 413 (and the
            // bearer token already forces browsers to preflight, so this opens no CSRF path).
            .content_type_required(false)
            .error_handler(|e, _| json_error(e)),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()),
    );
    // The WebSocket handshake: not REST, so not in the OpenAPI document (docs/websocket.md).
    // `connect` answers `GET` only; every other method, `HEAD` too, gets 405 with `Allow: GET`.
    // First: actix tries the routes in order, and in a reconnect storm this is nearly every
    // request (after the ~30 REST routes it cost ~17,000 instructions a handshake to reach,
    // docs/decisions/0020). No other route's path can be `/ws`.
    cfg.service(crate::gateway::ws::connect)
        .service(only("/ws", GET_ONLY));
    for e in ENDPOINTS
        .iter()
        .filter(|e| !e.internal || listener.serves_internal())
    {
        match e.caller {
            Caller::User | Caller::Browser => {
                cfg.service(browser(cors, e.path, e.allow, (e.route)()))
            }
            Caller::Anyone | Caller::Service => {
                cfg.service(only(e.path, e.allow).route((e.route)()))
            }
        };
    }
    // The SSE stream (contract §10): not REST either (docs/websocket.md, "SSE"). `GET` and
    // `HEAD` (the checks and the headers, no session), with CORS like the user API: an
    // `EventSource` on another origin needs it.
    cfg.service(browser(
        cors,
        "/sse",
        GET,
        get().to(crate::gateway::sse::connect),
    ));
}

/// A route browsers may call from another origin: `allow`'s methods, CORS for exactly those.
pub fn browser(
    cors: &CorsPolicy,
    path: &str,
    allow: &'static [Method],
    route: Route,
) -> impl HttpServiceFactory {
    only(path, allow)
        .route(route)
        .wrap(cors.for_route(allow))
        .wrap(from_fn(move |req, next| cors::edge(req, next, allow)))
}

/// The JSON extractor's errors: a body over its limit is a 413 (whether `Content-Length` said so
/// or the bytes did), anything else malformed JSON.
fn json_error(e: JsonPayloadError) -> actix_web::Error {
    match e {
        JsonPayloadError::OverflowKnownLength { length, limit } => ApiError::PayloadTooLarge(
            format!("request body is {length} bytes, larger than {limit}"),
        ),
        JsonPayloadError::Overflow { limit } => {
            ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"))
        }
        JsonPayloadError::Payload(PayloadError::Overflow) => ApiError::PayloadTooLarge(format!(
            "request body is larger than {USER_BODY_LIMIT} bytes"
        )),
        e => ApiError::MalformedJson(e.to_string()),
    }
    .into()
}

/// Reads a request body up to `limit` bytes; more is a 413 with the error body.
pub async fn read_body(
    req: &actix_web::HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    if let Some(len) = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
    {
        if len > limit {
            return Err(too_large());
        }
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the body: {e}")))?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".into()))
}
