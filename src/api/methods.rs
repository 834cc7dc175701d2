//! Methods at the edge (contract §7): a known path asked with a method it does not answer gets
//! `405` with `Allow` and the error body (actix's own answer is a bare 404 when every route of a
//! path has a method guard), and `HEAD` works wherever `GET` does.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, Resource, ResponseError};

use crate::error::ApiError;

pub const GET: &[Method] = &[Method::GET, Method::HEAD];
pub const POST: &[Method] = &[Method::POST];
pub const DELETE: &[Method] = &[Method::DELETE];

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

/// App-wide: `HEAD` is routed as `GET`. actix-http still sends no body, since it decides that
/// from the request line it parsed (a `HEAD`), and keeps `Content-Length`. Registered inside the
/// access log, which therefore still shows `HEAD`.
pub async fn head_as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}
