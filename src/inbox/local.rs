//! Local delivery at once: after a change COMMITS, its envelope goes straight to this node's
//! hub, so sessions here get it without the round trip relay -> Redis -> hub. The relay still
//! publishes it (for other nodes); a user actor drops the second copy by seq. Only ever called
//! after the commit returned: a change that failed or rolled back delivers nothing. Creates,
//! commands and erasures all come this one way, into the same mailbox as the relayed copies.

use std::sync::Arc;

use crate::broker::{Envelope, Hub};
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

    /// Whether `user` has sessions on this node: envelopes for anyone else need not be built.
    pub fn here(&self, user: &str) -> bool {
        self.hub.listens(&self.settings.user_channel(user))
    }

    /// One committed envelope of `user`'s, to this node's hub.
    pub fn deliver(&self, user: &str, envelope: Envelope) {
        self.user_events(std::iter::once((user, envelope)));
    }

    /// The envelopes `(user, envelope)` of committed changes, to this node's hub.
    pub fn user_events<'a>(&self, envelopes: impl Iterator<Item = (&'a str, Envelope)>) {
        let mut delivered = 0u64;
        for (user, envelope) in envelopes {
            self.hub
                .deliver(&self.settings.user_channel(user), envelope);
            delivered += 1;
        }
        if delivered > 0 {
            metrics::counter!("notifyd_local_deliveries_total").increment(delivered);
        }
    }
}
