//! Live topics (contract §8): per node, a router from topic channels straight to the sessions
//! subscribed here (no user actor on the way), each topic's retained value, and who may watch
//! without a token.

pub mod public;
pub mod retained;
pub mod router;

pub use router::{RetainedStore, Router};
