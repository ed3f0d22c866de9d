//! The drills of docs/RELIABILITY.md, each against the stack as real processes; each
//! prints a `DRILL <name> | …` line with its figures. ci/test.sh runs them one at a
//! time after the other tests (`cargo nextest run -p drills`).

mod bad_input;
mod broker_restart;
mod dependencies;
mod killed_responder;
mod llm_cold_start;
mod rolling_restart;
mod scale_out;
mod slow_clients;
mod soak;
