//! Local delivery at once: after a create COMMITS, its events go straight to this node's hub, so
//! sessions here get them without the round trip relay → Redis → hub. The relay still publishes
//! them (for other nodes); a user actor drops the second copy by seq (and fingerprint). Only
//! ever called after the commit returned: a create that failed or rolled back delivers nothing.

use std::sync::Arc;

use super::create::Inserted;
use super::input::CreateRequest;
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

    /// The `message.created` frames of committed rows, to the recipients connected here (the
    /// frames of others are not even built).
    pub fn user_events(&self, req: &CreateRequest, rows: &Inserted) {
        let mut delivered = 0u64;
        for (user, _seq, frame) in
            rows.frames(req, |u| self.hub.listens(&self.settings.user_channel(u)))
        {
            self.hub
                .deliver(&self.settings.user_channel(user), Arc::from(frame));
            delivered += 1;
        }
        if delivered > 0 {
            metrics::counter!("notifyd_local_deliveries_total").increment(delivered);
        }
    }
}
