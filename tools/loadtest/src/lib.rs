//! A load generator for the chat stack.
//!
//! It opens N conversations against the gateway, posts messages at a target rate on an
//! open-loop schedule ([`schedule`]), reads every reply over SSE ([`stream`]), matches
//! reply events to messages by `message_id` ([`tracker`]), samples the handlers' Kafka
//! lag as KEDA computes it and the local autoscaler's replicas once a second
//! ([`sample`]), and reports counts and latency percentiles ([`report`]) with a
//! per-second timeline ([`timeline`]) and SVG plots ([`plot`]).
//!
//! The binary is a thin wrapper around [`run`]; tests call it directly.

#![warn(missing_docs)]

pub mod auth;
pub mod cli;
pub mod conversation;
pub mod plot;
pub mod report;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod stream;
pub mod timeline;
pub mod tracker;

pub use cli::{Args, Auth, Config};
pub use report::Report;
pub use run::run;
