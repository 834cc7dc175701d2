//! Integration tests: real PostgreSQL, real Redis, real sockets. Each test has its own database
//! and Redis prefix. Run with `cargo test` (see README).

mod helpers;

mod binary;
mod broadcasts;
mod config;
mod demo_products;
mod direct;
mod eventlog;
mod gateway;
mod gateway_limits;
mod http_edge;
mod inbox_states;
mod keepalive;
mod lifecycle;
mod listen;
mod liveness;
mod local_delivery;
mod names;
mod pooler;
mod preferences;
mod presence;
mod push;
mod redis_cluster;
mod redis_tls_cluster;
mod relay;
mod relay_spread;
mod replica;
mod resync;
mod spine;
mod sse;
mod storm;
mod telemetry;
mod tls;
mod topics;
mod user_api;
mod ws_frames;
