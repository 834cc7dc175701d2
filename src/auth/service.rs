//! Internal callers: `Authorization: Bearer <service key>` from `NOTIFYD_SERVICE_KEYS`.

use std::future::{ready, Ready};

use actix_web::{dev::Payload, web, FromRequest, HttpMessage, HttpRequest};

use super::{bearer, ct_eq};
use crate::error::ApiError;

/// The service keys (`NOTIFYD_SERVICE_KEYS`: name, key), registered as app data
/// (`web::Data<ServiceKeys>`, see `startup::serve_http`): all the extractor needs.
pub struct ServiceKeys(pub Vec<(String, String)>);

/// The authenticated calling service (its configured name).
#[derive(Debug, Clone)]
pub struct Service(pub String);

impl FromRequest for Service {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}

fn authenticate(req: &HttpRequest) -> Result<Service, ApiError> {
    let keys = req
        .app_data::<web::Data<ServiceKeys>>()
        .ok_or_else(|| anyhow::anyhow!("service keys missing from the app data"))?;
    let key = bearer(req).ok_or_else(|| {
        ApiError::Unauthorized("missing service key (Authorization: Bearer <key>)".into())
    })?;
    // Compare against every key so the time taken does not reveal which one was close.
    let mut found = None;
    for (name, k) in &keys.0 {
        if ct_eq(k.as_bytes(), key.as_bytes()) {
            found = Some(name.clone());
        }
    }
    let service = found
        .map(Service)
        .ok_or_else(|| ApiError::Unauthorized("invalid service key".into()))?;
    // The request's span and its per-service error count (api::request_span).
    tracing::Span::current().record("service", service.0.as_str());
    req.extensions_mut().insert(service.clone());
    Ok(service)
}
