//! The serverless-style runtime both handlers share. A handler is a plain async
//! function from one input event to output events ([`handler::Handler`]); the runtime
//! runs it from Kafka ([`consumer`]) or behind HTTP ([`invoke`]).

pub mod cli;
pub mod consumer;
pub mod dead_letter;
pub mod handler;
pub mod invoke;
pub mod lanes;
pub mod offsets;
pub mod retry;
pub mod server;
pub mod settings;
pub mod status;
