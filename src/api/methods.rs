//! Methods at the edge (contract §7): a known path asked with a method it does not answer gets
//! `405` with `Allow` and the error body (actix's own answer is a bare 404 when every route of a
//! path has a method guard), `HEAD` works wherever `GET` does, and `HEAD /ws` is `405` with
//! `Allow: GET`: a handshake is a `GET` and nothing else.

use actix_web::http::{header, Method};
use actix_web::{guard, web, HttpResponse, Resource, ResponseError, Route};

use crate::error::ApiError;

pub const GET: &[Method] = &[Method::GET, Method::HEAD];
pub const POST: &[Method] = &[Method::POST];
pub const DELETE: &[Method] = &[Method::DELETE];
/// A document that is read and replaced (`/api/v1/me/preferences`).
pub const GET_PUT: &[Method] = &[Method::GET, Method::HEAD, Method::PUT];
/// The WebSocket handshake's methods: `GET` only. A `HEAD` cannot switch protocols, and routed
/// as a `GET` it was upgraded into a session all the same.
pub const GET_ONLY: &[Method] = &[Method::GET];

/// A route answering `GET` and `HEAD` (`GET`'s methods). Each route says so itself, rather than
/// `HEAD` being turned into `GET` before routing for the whole app, which sent `HEAD /ws` into the
/// handshake. actix-http sends no body for a `HEAD` request (it decides that from the request
/// line it parsed) and keeps `Content-Length`.
pub fn get() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// A route answering `GET`, `HEAD` and `PUT` (`GET_PUT`): one handler tells them apart.
pub fn get_put() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()).or(guard::Put()))
}

/// A resource at `path` whose routes answer `allow`; any other method gets `405`. Registered
/// after a macro-routed handler of the same path (whose method guard then fails), it is that
/// path's fallback.
pub fn only(path: &str, allow: &'static [Method]) -> Resource {
    web::resource(path).default_service(web::to(move || async move { not_allowed(allow) }))
}

/// `405` with `Allow` and the error body.
pub fn not_allowed(allow: &'static [Method]) -> HttpResponse {
    let list = allow
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut res = ApiError::MethodNotAllowed(format!("this route answers {list}")).error_response();
    if let Ok(v) = header::HeaderValue::from_str(&list) {
        res.headers_mut().insert(header::ALLOW, v);
    }
    res
}
