//! The one error type of the HTTP API, mapped to status codes and the contract's error body here
//! and nowhere else.

use actix_web::{http::StatusCode, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    MalformedJson(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 429: a per-client limit (`too_many_connections`, `rate_limited`, ...).
    #[error("{message}")]
    TooMany { code: &'static str, message: String },
    /// 429 `rate_limited` with `Retry-After`: a token bucket (`ratelimit.rs`) is empty for now.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation_failed",
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "idempotency_conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::TooMany { code, .. } => code,
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The contract's error body: `{"error": {"code", "message", "field"?}}`.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code().to_string(),
                message: self.to_string(),
                field: match self {
                    ApiError::Validation { field, .. } => Some(field.clone()),
                    _ => None,
                },
            },
        }
    }
}

/// The error body of every refusal (contract §3), on every route.
#[derive(Serialize, Debug, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Debug, ToSchema)]
pub struct ErrorDetail {
    /// Stable, snake_case: `validation_failed`, `malformed_json`, `bad_request`,
    /// `unauthorized`, `forbidden`, `not_found`, `idempotency_conflict`, `payload_too_large`,
    /// `method_not_allowed`, `too_many_connections`, `too_many_broadcasts`, `rate_limited`,
    /// `unavailable`, `internal`.
    #[schema(example = "validation_failed")]
    pub code: String,
    /// For people, not programs: its wording may change.
    pub message: String,
    /// With `validation_failed`: the field at fault, e.g. `title` or `messages[3].title`
    /// (empty when the body as a whole is wrong).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl From<diesel::result::Error> for ApiError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            // The database went away mid-request (restart, failover), or a failover left us on a
            // read-only standby: retryable, not a bug.
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection
                | DatabaseErrorKind::UnableToSendCommand
                | DatabaseErrorKind::ReadOnlyTransaction,
                info,
            ) => ApiError::Unavailable(format!("database unavailable: {}", info.message())),
            Error::BrokenTransactionManager => {
                ApiError::Unavailable("database unavailable: connection broken".into())
            }
            // A server restarting or shedding connections ends sessions with a FATAL error
            // (`pg_ctl restart -m fast`: 57P01 "terminating connection due to administrator
            // command"), which diesel-async reports as Unknown.
            Error::DatabaseError(DatabaseErrorKind::Unknown, info)
                if server_went_away(info.message()) =>
            {
                ApiError::Unavailable(format!("database unavailable: {}", info.message()))
            }
            e => ApiError::Internal(anyhow::Error::new(e).context("database")),
        }
    }
}

/// Whether a PostgreSQL error says the server ended or refused the session (shutdown, restart,
/// crash recovery, failover, connection limit), as opposed to a fault in the request itself.
/// diesel-async does not expose the SQLSTATE (57P01-57P03, 53300) for these, only the server's
/// message, so this matches the messages PostgreSQL sends for them.
fn server_went_away(message: &str) -> bool {
    const PREFIXES: [&str; 4] = [
        "terminating connection", // 57P01 admin shutdown, 57P02 crash of another backend, recovery conflict
        "the database system is", // 57P03: starting up, shutting down, in recovery mode
        "sorry, too many clients", // 53300
        "remaining connection slots are reserved", // 53300
    ];
    PREFIXES.iter().any(|p| message.starts_with(p))
}

impl From<diesel_async::pooled_connection::deadpool::PoolError> for ApiError {
    fn from(e: diesel_async::pooled_connection::deadpool::PoolError) -> Self {
        ApiError::Unavailable(format!("database unavailable: {e}"))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooMany { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = ?e, "request failed");
            metrics::counter!("notifyd_errors_total", "kind" => "internal").increment(1);
        }
        if self.status_code().is_client_error() {
            // Every refusal at the edge (401, 405, 413, 429, ...), by its code.
            metrics::counter!("notifyd_http_rejected_total", "code" => self.code()).increment(1);
        }
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let ApiError::RateLimited { retry_after, .. } = self {
            // Whole seconds, rounded up: a client that waits this long finds a token.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            resp.insert_header(("Retry-After", secs.max(1).to_string()));
        }
        resp.json(self.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn db_error(kind: DatabaseErrorKind, message: &str) -> ApiError {
        ApiError::from(Error::DatabaseError(kind, Box::new(message.to_string())))
    }

    /// Found by the chaos harness: `pg_ctl restart -m fast` answered in-flight requests 500.
    #[test]
    fn a_database_going_away_is_retryable() {
        for message in [
            "terminating connection due to administrator command",
            "terminating connection because of crash of another server process",
            "the database system is shutting down",
            "the database system is starting up",
            "sorry, too many clients already",
        ] {
            let e = db_error(DatabaseErrorKind::Unknown, message);
            assert_eq!(
                e.status_code(),
                StatusCode::SERVICE_UNAVAILABLE,
                "{message}"
            );
        }
        let e = db_error(
            DatabaseErrorKind::ReadOnlyTransaction,
            "cannot execute INSERT in a read-only transaction",
        );
        assert_eq!(e.status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn other_database_errors_stay_internal() {
        let e = db_error(
            DatabaseErrorKind::Unknown,
            "syntax error at or near \"SELEC\"",
        );
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        let e = db_error(DatabaseErrorKind::UniqueViolation, "duplicate key value");
        assert_eq!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
