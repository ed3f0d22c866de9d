//! Resilience and security drills (docs/RELIABILITY.md): the stack as real processes —
//! tansu, the Qdrant engine server, llama-server, `gateway`, `responder`, `memory` —
//! driven by the load generator while a drill kills, stops, starves or attacks a part
//! of it. Each drill prints its figures on one `DRILL` line.
//!
//! The binaries are the workspace's own (`cargo build --workspace`, which ci/test.sh
//! runs before the tests); the real dependencies come from the paths ci/test.sh exports.

pub mod figures;
pub mod proxy;
pub mod stack;

pub use figures::Figures;
pub use stack::{Service, Stack};
