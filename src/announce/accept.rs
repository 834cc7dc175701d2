//! Accepting an announcement: one transaction records it (with its recipients' snapshot) and
//! its `Idempotency-Key`.

use diesel_async::AsyncConnection;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::ApiError;
use crate::inbox::create::{self, Idempotency};
use crate::model::input::BroadcastRequest;
use crate::store::{broadcasts, Conn};

/// The `202` body, and whether it replays an earlier request.
#[derive(Debug)]
pub struct Accepted {
    pub body: Value,
    pub replayed: bool,
}

/// Records the broadcast `req` of `service`, unless `service` already has `max_running`
/// broadcasts running (`429 too_many_broadcasts`).
pub async fn accept(
    conn: &mut Conn,
    service: &str,
    req: &BroadcastRequest,
    idem: Option<Idempotency<'_>>,
    max_running: i64,
) -> Result<Accepted, ApiError> {
    // The route is part of the hash: one key reused across routes is a conflict, not a replay.
    let hash = hex::encode(Sha256::digest(
        format!("broadcast\n{}", req.canonical).as_bytes(),
    ));
    conn.transaction::<_, ApiError, _>(async |conn| {
        if let Some(body) = create::replayed(conn, service, idem.as_ref(), &hash).await? {
            return Ok(Accepted {
                body,
                replayed: true,
            });
        }
        broadcasts::lock_service(conn, service).await?;
        if broadcasts::running_of(conn, service).await? >= max_running {
            return Err(ApiError::TooMany {
                code: "too_many_broadcasts",
                message: format!(
                    "at most {max_running} broadcasts of one service run at once; \
                     wait for one to finish"
                ),
            });
        }
        let id = Uuid::now_v7();
        broadcasts::accept(conn, id, service, &req.message).await?;
        let body = json!({ "id": id, "status": "running" });
        create::remember(conn, service, idem.as_ref(), &body.to_string()).await?;
        Ok(Accepted {
            body,
            replayed: false,
        })
    })
    .await
}
