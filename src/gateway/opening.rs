//! What every transport's opening does before its session starts (`ws` and `sse`): the
//! browser's origin, the query's integers, the node closing, and the socket limits (a user's
//! sockets of every transport count against one cap, an anonymous client's against its
//! address's).

use actix_web::HttpRequest;

use super::admission::Refused;
use super::conn::Conn;
use super::sockets::SocketPermit;
use crate::auth::jwt::UserClaims;
use crate::error::ApiError;
use crate::state::AppState;
use crate::topics::public::{client_ip, client_key};

/// Takes one of the user's sockets (`NOTIFYD_MAX_SOCKETS_PER_USER`), or of the anonymous
/// client address's (`NOTIFYD_MAX_ANON_SOCKETS_PER_IP`): `429 too_many_connections` past it.
pub fn socket_permit(
    req: &HttpRequest,
    state: &AppState,
    claims: Option<&UserClaims>,
) -> Result<SocketPermit, ApiError> {
    match claims {
        Some(c) => state
            .gateway
            .sockets
            .open(&c.user, state.settings.max_sockets_per_user),
        None => {
            let ip = client_ip(req, &state.settings.trusted_proxies)
                .map(client_key)
                .unwrap_or_default();
            state
                .gateway
                .anon_sockets
                .open_anonymous(&ip, state.settings.max_anon_sockets_per_ip)
        }
    }
}

/// The node is shutting down: 503 (no upgrade), counted with the other refusals.
pub fn refuse_shutting_down() -> ApiError {
    metrics::counter!("notifyd_ws_refused_total", "reason" => Refused::Closing.reason())
        .increment(1);
    ApiError::Unavailable("server is restarting".into())
}

/// Cross-site hijacking guard (WebSocket and SSE): with `NOTIFYD_ALLOWED_ORIGINS` set, a browser opening
/// from any other origin is refused. Non-browser clients send no `Origin` and are let through.
/// Compared as CORS compares (`values::origin_allowed`: scheme and host without regard to case),
/// so a page CORS lets call the API is never refused its socket.
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(allowed) = &state.settings.allowed_origins else {
        return Ok(());
    };
    let Some(origin) = req.headers().get("origin") else {
        return Ok(());
    };
    // Not visible ASCII: no listed origin (those are) can match it.
    let origin = origin.to_str().unwrap_or("");
    if crate::config::values::origin_allowed(allowed, origin) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin {origin:?} is not allowed"
        )))
    }
}

/// An optional query parameter that must be a non-negative integer (`since`, `epoch`).
pub fn non_negative(v: Option<&str>, field: &'static str) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| ApiError::validation(field, "must be a non-negative integer")),
    }
}

/// After the wait for a turn: a client that gave up meanwhile (closed its side) would still
/// cost a join, an actor and a catch-up read for a connection nobody reads.
pub fn still_there(conn: Option<&Conn>) -> Result<(), ApiError> {
    if conn.is_some_and(Conn::peer_closed) {
        metrics::counter!("notifyd_ws_refused_total", "reason" => "gone_while_waiting")
            .increment(1);
        return Err(ApiError::BadRequest(
            "the client closed the connection while waiting for a turn".into(),
        ));
    }
    Ok(())
}
