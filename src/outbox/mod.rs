//! The transactional outbox: handlers commit events into it; the relay publishes them.

pub mod backlog;
pub mod housekeeping;
pub mod relay;
pub mod share;
pub mod wake;

pub use housekeeping::Housekeeper;
pub use relay::Relay;
pub use wake::Waker;
