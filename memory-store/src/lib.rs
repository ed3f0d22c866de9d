//! The chat stack's memory, shared by the handlers (which write and recall it) and the
//! gateway (which shows and deletes it): the Qdrant collection of turns ([`store`]),
//! the deletions that keep deleted turns gone ([`deletions`]), and the embedder that
//! turns texts into the collection's vectors ([`embed`]).

pub mod deletions;
pub mod embed;
pub mod store;
