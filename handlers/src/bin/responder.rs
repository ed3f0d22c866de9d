//! `responder`: answers chat messages with an LLM. See `responder --help`.

use std::process::ExitCode;

use handlers::{responder::Responder, runtime::cli};

fn main() -> ExitCode {
    cli::main::<Responder>(
        "Answers chat messages from `user_messages` with an OpenAI-compatible LLM, streaming replies to \
         `model_responses` (group `responder`); scaled by KEDA",
    )
}
