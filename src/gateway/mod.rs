//! The WebSocket gateway: per node, one actor per connected user owns all that user's sessions.

pub mod catch_up;
pub mod conn;
pub mod frame_guard;
pub mod mailbox;
pub mod outbound;
pub mod protocol;
pub mod registry;
pub mod session;
pub mod sockets;
pub mod user_actor;
pub mod ws;

pub use registry::Gateway;
