//! Local delivery at once: after a create COMMITS, its events go straight to this node's hub, so
//! sessions here get them without the round trip relay → Redis → hub. The relay still publishes
//! them (for other nodes); a user actor drops the second copy by seq (and fingerprint). Only
//! ever called after the commit returned: a create that failed or rolled back delivers nothing.

use std::sync::Arc;

use crate::broker::Hub;
use crate::config::Settings;
use crate::state::AppState;

#[derive(Clone)]
pub struct LocalDelivery {
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
}

impl LocalDelivery {
    pub fn of(state: &AppState) -> Self {
        LocalDelivery {
            hub: state.hub.clone(),
            settings: state.settings.clone(),
        }
    }

    /// Whether `user` has sessions on this node: frames for anyone else need not be built.
    pub fn here(&self, user: &str) -> bool {
        self.hub.listens(&self.settings.user_channel(user))
    }

    /// The `message.created` frames `(user, seq, frame)` of committed rows, to this node's hub.
    pub fn user_events<'a>(&self, frames: impl Iterator<Item = (&'a str, i64, String)>) {
        let mut delivered = 0u64;
        for (user, _seq, frame) in frames {
            self.hub
                .deliver(&self.settings.user_channel(user), Arc::from(frame));
            delivered += 1;
        }
        if delivered > 0 {
            metrics::counter!("notifyd_local_deliveries_total").increment(delivered);
        }
    }
}
