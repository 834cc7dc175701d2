//! The WebSocket gateway: per node, one actor per connected user owns all that user's sessions.

pub mod admission;
pub mod catch_up;
pub mod conn;
pub mod inbound;
pub mod intake;
pub mod lifetime;
pub mod mailbox;
pub mod opening;
pub mod registry;
pub mod session;
pub mod sockets;
pub mod sse;
pub mod user_actor;
pub mod vec_map;
pub mod ws;
pub mod ws_body;
pub mod ws_messages;

pub use registry::Gateway;

/// An idle node holds one session task per socket and one actor task per connected user: their
/// futures' sizes are most of what an idle socket costs (docs/benchmarks.md, memory per idle
/// socket). These bounds catch a change that inlines a large future into either (box it), or
/// widens what every queue slot holds.
#[cfg(test)]
mod per_socket_sizes {
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_per_socket_futures_and_queue_slots_stay_small() {
        // Measured (debug build): session 856 bytes (1,184 while it carried actix-ws's session
        // and message stream), actor 632; release builds are smaller.
        let session = future_size(super::session::run);
        let actor = future_size(super::user_actor::run);
        eprintln!("session {session} actor {actor}");
        assert!(session <= 1536, "session task future is {session} bytes");
        assert!(actor <= 1024, "user actor task future is {actor} bytes");
        assert!(std::mem::size_of::<super::mailbox::ActorMsg>() <= 16);
        assert!(std::mem::size_of::<crate::wire::outbound::Out>() <= 24);
    }
}
