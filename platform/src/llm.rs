//! OpenAI-compatible endpoints (chat and embeddings) from the environment.
//!
//! The same settings work for OpenAI, vLLM, Ollama, TEI and llama.cpp's server: a base
//! URL, a model name and an optional API key. The key is held as a [`SecretString`]
//! and only exposed to the HTTP client. [`is_retryable`] says which of their HTTP
//! errors are worth another request.

use std::time::Duration;

use anyhow::Context;
use async_openai::{config::OpenAIConfig, middleware::ReqwestService, Client};
use secrecy::{ExposeSecret, SecretString};

use crate::settings::{Env, SettingsError};

/// One OpenAI-compatible endpoint: `{PREFIX}_BASE_URL`, `{PREFIX}_MODEL`,
/// `{PREFIX}_API_KEY` / `{PREFIX}_API_KEY_FILE`, `{PREFIX}_TIMEOUT_SECS`.
#[derive(Clone)]
pub struct Endpoint {
    /// Base URL including `/v1`, e.g. `http://127.0.0.1:8080/v1`.
    pub base_url: String,
    /// Model name sent with each request.
    pub model: String,
    /// API key; local servers usually need none.
    pub api_key: Option<SecretString>,
    /// Longest silence tolerated while waiting for bytes (connect and read).
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[set]"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Endpoint {
    /// Reads the endpoint named by `prefix` (e.g. `OPENAI` or `EMBEDDINGS`).
    pub fn from_env(env: &Env, prefix: &str) -> Result<Self, SettingsError> {
        let base_name = format!("{prefix}_BASE_URL");
        let base_url =
            env.required(&base_name, "base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8080/v1")?;
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(SettingsError::Invalid {
                name: base_name,
                value: base_url,
                reason: "must start with http:// or https://".into(),
            });
        }
        let model = env.required(&format!("{prefix}_MODEL"), "model name to request, e.g. gpt-4o-mini")?;
        let timeout_name = format!("{prefix}_TIMEOUT_SECS");
        let timeout_secs: u64 = env.parse_or(&timeout_name, 30)?;
        if timeout_secs == 0 {
            return Err(SettingsError::Invalid {
                name: timeout_name,
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        Ok(Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            model,
            api_key: env.secret(&format!("{prefix}_API_KEY"))?,
            timeout: Duration::from_secs(timeout_secs),
        })
    }

    /// An `async-openai` client for this endpoint that sends each request once (no
    /// built-in retries). Connect and read timeouts bound a server that hangs; a slow
    /// but steady stream is not cut off.
    pub fn client(&self) -> anyhow::Result<Client<OpenAIConfig>> {
        let mut config = OpenAIConfig::new().with_api_base(&self.base_url);
        if let Some(key) = &self.api_key {
            config = config.with_api_key(key.expose_secret());
        }
        let http = reqwest::Client::builder()
            .connect_timeout(self.timeout.min(Duration::from_secs(10)))
            .read_timeout(self.timeout)
            .build()
            .context("building the HTTP client")?;
        // Without async-openai's own retry layer (3 retries on 429/5xx by default): the
        // caller owns the retry policy, so that "N attempts" means N requests.
        Ok(Client::with_config(config).with_http_service(ReqwestService::new(http)))
    }
}

/// Whether an HTTP error status of an LLM or embeddings endpoint may pass if the request
/// is sent again: rate limits and server errors; any other status is the request's fault.
pub fn is_retryable(status: reqwest::StatusCode) -> bool {
    status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// The HTTP status an error body names, for servers whose error objects async-openai
/// cannot read: llama.cpp's server (`{"error": {"code": 400, …}}`) and vLLM
/// (`{"object": "error", "code": 400, …}`) give `code` as a number where OpenAI gives a
/// string, so their 4xx answers arrive as a deserialisation error whose status would
/// otherwise be lost (and a request the server refuses would be retried).
pub fn status_in_error_body(body: &str) -> Option<reqwest::StatusCode> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let code = value.get("error").and_then(|e| e.get("code")).or_else(|| value.get("code"))?;
    let code = u16::try_from(code.as_u64()?).ok()?;
    reqwest::StatusCode::from_u16(code).ok().filter(|s| s.is_client_error() || s.is_server_error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_llama_cpp_and_vllm_error_bodies() {
        let llama = r#"{"error":{"code":400,"message":"request (3010 tokens) exceeds the available context size (2048 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":3010,"n_ctx":2048}}"#;
        assert_eq!(status_in_error_body(llama), Some(reqwest::StatusCode::BAD_REQUEST));
        let vllm = r#"{"object":"error","message":"maximum context length is 2048 tokens","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(status_in_error_body(vllm), Some(reqwest::StatusCode::BAD_REQUEST));
        for other in
            [r#"{"error":{"code":"invalid_api_key"}}"#, "not json", r#"{"code":200}"#, r#"{"choices":[]}"#]
        {
            assert_eq!(status_in_error_body(other), None, "{other}");
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_retryable() {
        use reqwest::StatusCode;
        for status in
            [StatusCode::TOO_MANY_REQUESTS, StatusCode::INTERNAL_SERVER_ERROR, StatusCode::BAD_GATEWAY]
        {
            assert!(is_retryable(status), "{status}");
        }
        for status in [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND] {
            assert!(!is_retryable(status), "{status}");
        }
    }

    #[test]
    fn reads_a_prefixed_endpoint() {
        let env = Env::from_pairs([
            ("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1/"),
            ("OPENAI_MODEL", "smollm2"),
            ("OPENAI_API_KEY", "sk-test-123"),
        ]);
        let e = Endpoint::from_env(&env, "OPENAI").unwrap();
        assert_eq!(e.base_url, "http://127.0.0.1:8080/v1");
        assert_eq!(e.timeout, Duration::from_secs(30));
        assert!(!format!("{e:?}").contains("sk-test-123"));
        assert!(e.client().is_ok());
    }

    #[test]
    fn names_missing_and_invalid_variables() {
        let err = Endpoint::from_env(&Env::default(), "EMBEDDINGS").unwrap_err();
        assert!(err.to_string().starts_with("EMBEDDINGS_BASE_URL is required"), "{err}");
        let env = Env::from_pairs([("OPENAI_BASE_URL", "localhost:8080"), ("OPENAI_MODEL", "m")]);
        let err = Endpoint::from_env(&env, "OPENAI").unwrap_err();
        assert!(err.to_string().contains("must start with http"), "{err}");
    }
}
