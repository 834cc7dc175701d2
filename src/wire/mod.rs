//! What travels between notifyd and a connected client, whatever carries it (a WebSocket or an SSE
//! stream): the frames both ways (`protocol`), the close codes, and each session's outbound
//! queue (`outbound::SessionTx`) that the user actor, the topic router and the session's own
//! transport task fill and drain, built on the edge's one queue primitive (`queue`).
//!
//! Below the gateway and the topic router, so both use it without the router reaching up
//! into the gateway; above the inbox (an event's frame is built from its change).

pub mod outbound;
pub mod protocol;
pub mod queue;
pub mod sse;
