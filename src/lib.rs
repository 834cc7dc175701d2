//! notifyd: in-app notifications that are never lost, duplicated or reordered.
//!
//! The data path, by module: `api::messages` (handler) → `inbox::create` (one transaction:
//! rows, counters, `store::events`, `store::outbox`) → `outbox::relay` → `broker` (Redis or
//! in-process) → `broker::hub` → `gateway::user_actor` → `wire::outbound` (the session's queue)
//! → `gateway::session` (the socket). Topic events go `broker::hub` → `topics::router` →
//! `wire::outbound`, without the user actors. A client's messages come back the other way:
//! `gateway::session` → `gateway::inbound` → the actor's `gateway::mailbox`, the router, or
//! `inbox::direct`. Every input is checked by `model` first.

pub mod announce;
pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod gateway;
pub mod http_listener;
pub mod http_server;
pub mod inbox;
pub mod listen;
pub mod model;
pub mod outbox;
pub mod presence;
pub mod push;
pub mod ratelimit;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod timed;
pub mod tls;
pub mod topics;
pub mod web;
pub mod wire;
