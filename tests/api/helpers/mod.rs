//! The test harness: every test gets its own PostgreSQL database (random name, dropped after)
//! and its own Redis key/channel prefix, and talks to real `notifyd` nodes over real sockets.
//!
//! One module per concern; tests import them all through `crate::helpers::*`.

// Each test file uses a part of the harness.
#![allow(dead_code)]

mod app;
mod db;
mod ids;
mod net;
mod probes;
mod push;
mod raw_ws;
mod redis;
mod sse;
mod tokens;
mod wait;
mod ws;

pub use self::redis::*;
pub use app::*;
pub use db::*;
pub use ids::{new_prefix, new_user};
pub use net::*;
pub use probes::*;
pub use push::*;
pub use raw_ws::*;
pub use sse::*;
pub use tokens::*;
pub use wait::*;
pub use ws::*;
