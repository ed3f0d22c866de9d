//! The chat stack's handlers: short-lived, stateless processes that KEDA starts from
//! zero on Kafka lag. [`responder`] answers user messages with an LLM; [`memory`]
//! embeds turns into Qdrant. Both run on the shared [`runtime`].

pub mod memory;
pub mod responder;
pub mod runtime;

// The store and the embedder live in `memory-store`, shared with the gateway's history
// routes; re-exported so handler code and tests keep their paths.
pub use memory_store::{embed, store};
