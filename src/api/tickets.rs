//! `POST /api/v1/me/tickets` (contract §10): a user JWT traded for a short ticket that opens
//! `GET /sse?ticket=` (see `auth::ticket` for why a JWT never goes in that URL).

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::user::User;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// `201` of `POST /api/v1/me/tickets`.
#[derive(Serialize, ToSchema)]
pub struct TicketView {
    /// Opens `GET /sse?ticket=<it>` on any node until `expires_at`.
    pub ticket: String,
    /// At most 5 minutes from now, never later than the JWT's own `exp`.
    pub expires_at: DateTime<Utc>,
}

/// `POST /api/v1/me/tickets`: any body is ignored.
#[utoipa::path(post, path = "/api/v1/me/tickets", tag = "user",
    security(("userJwt" = [])),
    responses(
        (status = 201, description = "a ticket for `GET /sse?ticket=`, valid for at most 5 minutes (reconnects included); a stream it opens ends at the JWT's `exp`", body = TicketView),
        (status = 401, description = "missing, invalid or expired user token", body = ErrorBody),
        (status = 403, description = "a browser Origin not in NOTIFYD_ALLOWED_ORIGINS", body = ErrorBody),
    ))]
pub async fn create(user: User, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let now = Utc::now();
    let t = state.tickets.mint(&user.0, now.timestamp())?;
    metrics::counter!("notifyd_sse_tickets_total").increment(1);
    let expires_at = DateTime::from_timestamp(t.expires_at, 0).unwrap_or(now);
    Ok(HttpResponse::Created().json(TicketView {
        ticket: t.ticket,
        expires_at,
    }))
}
