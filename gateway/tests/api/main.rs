//! The gateway's HTTP API against a real broker: accepted messages, streams, resume,
//! ownership, bad input, rate limits, broker outages and shutdown; history, memory
//! and deletion against the Qdrant engine server and the memory worker.

mod auth;
mod bad_input;
mod chat;
#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod history;
mod openapi;
mod outage;
mod shutdown;
mod stream;
mod trace;
