//! `memory`: embeds chat turns into Qdrant. See `memory --help`.

use std::process::ExitCode;

use handlers::{memory::MemoryWorker, runtime::cli};

fn main() -> ExitCode {
    cli::main::<MemoryWorker>(
        "Embeds every user message and finished reply into Qdrant (group `memory`); scaled by KEDA",
    )
}
