//! The chat stack's handlers: short-lived, stateless processes that KEDA starts from
//! zero on Kafka lag. [`responder`] answers user messages with an LLM; [`memory`]
//! embeds turns into Qdrant. Both run on the shared [`runtime`].

pub mod embed;
pub mod memory;
pub mod responder;
pub mod runtime;
pub mod store;
