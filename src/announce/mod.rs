//! Announcements to every known user (`POST /api/v1/broadcasts`, contract §8).
//!
//! `accept` records the broadcast (and, with it, who its recipients are: see
//! `store::broadcasts`); the `worker` on every node then creates the notifications in `batch`es,
//! each ONE transaction through the same insert path as `POST /api/v1/messages`, advancing the
//! broadcast's cursor in that transaction. A crash loses at most the batch in flight (rolled
//! back), and whichever node claims the broadcast next continues from the cursor.

pub mod accept;
pub mod batch;
pub mod worker;

use std::sync::Arc;

use tokio::sync::Notify;

/// Wakes this node's worker at once after a broadcast was accepted (other nodes find it by
/// polling).
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    pub async fn woken(&self) {
        self.0.notified().await
    }
}
