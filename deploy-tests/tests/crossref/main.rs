//! Cross-references between the manifests, the code and the pipeline: what the
//! validators cannot know. Every binary accepts the environment its manifest gives it
//! (its own `check-config`), ports and probe paths are the ones the binaries serve,
//! KEDA watches the topics and groups of `platform::topics`, image names are the ones
//! the pipeline pushes (and its deploy overlay can be diffed and pulled), every pod is
//! locked down, and the NetworkPolicies allow the stack's flows and nothing else.

mod common;
mod deploy_overlay;
mod exposure;
mod images;
mod keda;
mod monitoring;
mod network_policies;
mod pod_security;
mod ports;
mod secrets;
mod settings;
mod variants;
