//! `DELETE /api/v1/users/{id}` (internal services): erase a user (contract §9).

use actix_web::{web, HttpResponse};

use crate::auth::service::Service;
use crate::broker::Envelope;
use crate::error::{ApiError, ErrorBody};
use crate::inbox::erase;
use crate::inbox::local::LocalDelivery;
use crate::model::input;
use crate::state::AppState;

/// `204` once everything of the user is gone (also when there was nothing: erasing is
/// idempotent). A user id that no message could have had (empty, too long, whitespace,
/// control or format characters) is a `422`. The user's open sockets get a `sync` reset: here at once, on every node through the relay.
#[utoipa::path(delete, path = "/api/v1/users/{id}", tag = "service",
    security(("serviceKey" = [])),
    params(("id" = inline(String), Path, description = "the user id (a token's `sub`): 1 to 128 characters, no whitespace, control or format characters (a `%` works when sent as `%25`; the pattern leaves it out because some clients send a path's `%` unescaped)",
        min_length = 1, max_length = 128, pattern = r"^[^\s\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb%]+$")),
    responses(
        (status = 204, description = "every notification, event, counter and key of the user is gone (also when there was nothing); their open sockets get a `sync` reset"),
        (status = 401, description = "missing or unknown service key", body = ErrorBody),
        (status = 422, description = "not a user id (empty, too long, whitespace, control or format characters); `field` is `id`", body = ErrorBody),
        (status = 503, description = "the database is unavailable or the erase took longer than the request's database timeout (rolled back); retry", body = ErrorBody),
    ))]
pub async fn erase(
    service: Service,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let user = id.into_inner();
    input::check_user_id(&user).map_err(|e| ApiError::validation("id", e))?;
    let erased = state
        .db(async |conn| erase::erase(conn, &user).await)
        .await?;
    if erased.had_inbox {
        state.waker.wake();
        // Sessions here hear it now, ahead of the relayed notice (one path, see inbox::local).
        LocalDelivery::of(&state).deliver(&user, Envelope::erased());
    }
    metrics::counter!("notifyd_users_erased_total").increment(1);
    tracing::info!(
        service = %service.0,
        messages = erased.messages,
        events = erased.events,
        outbox = erased.outbox,
        idempotency_keys = erased.idempotency_keys,
        "user erased"
    );
    Ok(HttpResponse::NoContent().finish())
}
