//! One batch of an announcement, in ONE transaction: lock a running broadcast (skipping any
//! another node holds), take the next recipients after its cursor, create their notifications
//! through the insert path of `POST /api/v1/messages`, advance the cursor, commit.

use diesel_async::AsyncConnection;
use uuid::Uuid;

use crate::error::ApiError;
use crate::inbox::create;
use crate::inbox::local::LocalDelivery;
use crate::model::input::{CreateRequest, MessageInput};
use crate::store::{broadcasts, Conn};

/// What one batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub broadcast: Uuid,
    /// The service that sent the broadcast (labels `notifyd_messages_created_total`).
    pub service: String,
    /// Notifications created (one per recipient who did not mute the type).
    pub created: usize,
    /// Recipients who muted the announcement's type (preferences, `in_app: false`).
    pub skipped: usize,
    /// The cursor passed the last recipient: the broadcast is now `done`.
    pub done: bool,
}

/// Runs one batch of at most `limit` recipients; `None` when no running broadcast is free.
/// After the commit, the batch's events go to this node's sessions (`local`).
pub async fn run_one(
    conn: &mut Conn,
    local: &LocalDelivery,
    limit: i64,
) -> Result<Option<Batch>, ApiError> {
    let mut created = None;
    let done = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let Some(b) = broadcasts::claim(conn).await? else {
                return Ok(None);
            };
            let users =
                broadcasts::next_recipients(conn, &b.snapshot, b.cursor_user.as_deref(), limit)
                    .await?;
            let n = users.len();
            let done = (n as i64) < limit;
            let cursor = users.last().cloned().or(b.cursor_user);
            let (mut made, mut skipped) = (0, 0);
            if n > 0 {
                let req = CreateRequest {
                    entries: vec![MessageInput {
                        recipients: users,
                        title: b.title,
                        content: b.content,
                        kind: b.kind,
                        send_user: b.send_user,
                        skip_url: b.skip_url,
                        data: b.data,
                    }],
                    source: bytes::Bytes::new(),
                };
                // The one insert path: a recipient who muted the type gets nothing here either.
                let rows = create::insert_rows(conn, &b.service, &req, Some(b.id)).await?;
                (made, skipped) = (rows.len(), rows.skipped());
                created = Some((req, rows));
            }
            broadcasts::advance(
                conn,
                b.id,
                cursor.as_deref(),
                made as i64,
                skipped as i64,
                done,
            )
            .await?;
            Ok(Some(Batch {
                broadcast: b.id,
                service: b.service.clone(),
                created: made,
                skipped,
                done,
            }))
        })
        .await?;
    // Committed: hand the batch's events to the recipients connected here.
    if let Some((req, rows)) = &created {
        local.user_events(rows.envelopes(req, |u| local.here(u)));
    }
    Ok(done)
}
