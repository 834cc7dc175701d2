//! The WebSocket gateway: per node, one actor per connected user owns all that user's sessions.

pub mod conn;
pub mod frame_guard;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod user_actor;
pub mod ws;

pub use registry::Gateway;
