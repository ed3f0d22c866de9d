//! What every binary of the chat stack stands on.
//!
//! The contracts of `docs/ARCHITECTURE.md` live here so that the gateway and the
//! handlers cannot disagree on them: topic names ([`topics`]), the events on those
//! topics ([`events`]), how a Kafka client is configured ([`kafka`]), how settings are
//! read ([`settings`]), how logs are written ([`telemetry`]), how traces are exported
//! ([`otel`]) and how a trace crosses Kafka ([`trace_context`]). [`bootstrap`] prepares
//! a broker for the stack and [`lag`] measures consumer lag the way KEDA does. [`llm`]
//! configures OpenAI-compatible clients and says which of their errors are worth
//! another request.
//!
//! Small pieces every binary would otherwise repeat: [`shutdown`] waits for SIGTERM or
//! Ctrl-C, [`sync`] locks shared state that must outlive a panicking holder.

pub mod bootstrap;
pub mod events;
pub mod kafka;
pub mod lag;
pub mod llm;
pub mod otel;
pub mod prometheus;
pub mod settings;
pub mod shutdown;
pub mod sync;
pub mod telemetry;
pub mod topics;
pub mod trace_context;
