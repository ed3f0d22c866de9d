//! The serverless-style runtime both handlers share. A handler is a plain async
//! function from one input event to output events ([`Handler`]); the runtime runs it
//! from Kafka (`consumer`) or behind HTTP (`invoke`). Only what a handler implements
//! and what a binary calls ([`cli`]) is public.

mod assignment;
pub mod cli;
mod consumer;
mod dead_letter;
mod handler;
mod invoke;
mod lanes;
mod offsets;
mod retry;
mod server;
mod settings;
mod status;

pub(crate) use handler::attempt_id;
pub use handler::{Context, Handler, HandlerError, InputIds};
