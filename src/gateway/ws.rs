//! `GET /ws`: authenticate, check the origin, upgrade, and hand the session to the user's actor.

use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::session::{self, SessionTx, OUTBOUND_QUEUE};
use crate::auth::user::authenticate_ws;
use crate::error::ApiError;
use crate::state::AppState;

#[derive(Deserialize)]
struct WsQuery {
    since: Option<String>,
}

#[get("/ws")]
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    check_origin(&req, &state)?;
    let claims = authenticate_ws(&req)?;
    let q = web::Query::<WsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::validation("since", "must be a non-negative integer"))?,
        ),
    };
    if state.gateway.is_shutting_down() {
        return Err(ApiError::Unavailable("server is restarting".into()));
    }
    let (response, ws_session, stream) = actix_ws::handle(&req, body)
        .map_err(|e| ApiError::BadRequest(format!("websocket handshake: {e}")))?;
    let (frames_tx, frames_rx) = mpsc::channel(OUTBOUND_QUEUE);
    let (close_tx, close_rx) = watch::channel(None);
    let me = SessionTx {
        id: state.gateway.next_id(),
        frames: frames_tx,
        close: close_tx,
    };
    actix_web::rt::spawn(session::writer(
        ws_session.clone(),
        frames_rx,
        close_rx,
        session::close_grace(state.settings.heartbeat),
    ));
    let actor = state.gateway.join(&state, claims, me.clone(), since);
    actix_web::rt::spawn(session::reader(
        ws_session,
        stream,
        me,
        actor,
        state.settings.heartbeat,
    ));
    Ok(response)
}

/// Cross-site WebSocket hijacking guard: with `NOTIFYD_ALLOWED_ORIGINS` set, a browser handshake
/// from any other origin is refused. Non-browser clients send no `Origin` and are let through.
fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let Some(allowed) = &state.settings.allowed_origins else {
        return Ok(());
    };
    let Some(origin) = req.headers().get("origin") else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
    if allowed.iter().any(|a| a == origin || a == "*") {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "origin {origin:?} is not allowed"
        )))
    }
}
