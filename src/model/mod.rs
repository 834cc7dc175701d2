//! The ground floor: what notifyd's data is and the rules every input obeys, before any of it
//! reaches a transaction, a socket or a token. Everything above (handlers, the gateway, topics,
//! the inbox's transactions, the store) checks its input here, so one rule holds on every path.

pub mod glob;
pub mod input;
pub mod names;
pub mod preferences;
pub mod topic;
