//! `POST /chat`: accept a message, answer 202 once the broker has it; or, with
//! `?stream=true`, answer with the reply's SSE stream right away.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::Instant,
};

use axum::{
    extract::{
        rejection::{JsonRejection, QueryRejection},
        Query, State,
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Extension, Json,
};
use platform::trace_context::TraceParent;
use serde::Deserialize;
use uuid::Uuid;

use crate::{auth::User, error::ApiError, idempotency::Entry, intake::Accepted, sse, state::AppState};

/// Namespace of message ids derived from an `Idempotency-Key`.
const IDEMPOTENT_MESSAGE_NAMESPACE: Uuid = Uuid::from_u128(0x1de6_0d0e_6b1e_4c3a_9f0e_6d65_7373_6167);

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;

/// The body of `POST /chat`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// Continue this conversation; omit to start a new one.
    pub conversation_id: Option<Uuid>,
    /// The message.
    pub text: String,
}

/// The query of `POST /chat`.
#[derive(Debug, Default, Deserialize)]
pub struct ChatQuery {
    /// Answer with the reply's SSE stream instead of 202.
    #[serde(default)]
    pub stream: bool,
}

/// `POST /chat`.
pub async fn post_chat(
    State(state): State<AppState>,
    Extension(trace): Extension<TraceParent>,
    user: User,
    headers: HeaderMap,
    query: Result<Query<ChatQuery>, QueryRejection>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    metrics::counter!("gateway_chat_requests_total").increment(1);
    let started = Instant::now();
    let Query(query) = query?;
    let Json(request) = body?;
    let idempotency_key = idempotency_key(&headers)?;
    let fingerprint = fingerprint(request.conversation_id, &request.text);
    if let Some(key) = &idempotency_key {
        if let Some(previous) = state.idempotency.get(&user.id, key) {
            if previous.request != fingerprint {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                ));
            }
            return answer(&state, &user, previous.answer, query.stream);
        }
    }
    // Retries that reach another replica carry the same id, so downstream idempotence
    // (memory point ids, the stream's attempt handling) applies.
    let message_id = idempotency_key.as_ref().map(|key| {
        let name = format!("{}\n{key}", user.id);
        Uuid::new_v5(&IDEMPOTENT_MESSAGE_NAMESPACE, name.as_bytes())
    });
    let message =
        state.intake.accept(&user, request.conversation_id, request.text, message_id, trace).await?;
    let accepted = Accepted::of(&message);
    if let Some(key) = &idempotency_key {
        state.idempotency.put(&user.id, key, Entry { request: fingerprint, answer: accepted });
    }
    metrics::histogram!("gateway_chat_seconds").record(started.elapsed().as_secs_f64());
    answer(&state, &user, accepted, query.stream)
}

/// 202 with the accepted message, or (`stream`) an SSE response: an `accepted` event
/// with the same fields, then the message's reply events until its `done` or `error`.
/// Reply events that came before the subscription are in the hub's replay window.
fn answer(state: &AppState, user: &User, accepted: Accepted, stream: bool) -> Result<Response, ApiError> {
    if !stream {
        return Ok((StatusCode::ACCEPTED, Json(accepted.to_json())).into_response());
    }
    let subscription = state
        .hub
        .subscribe(accepted.conversation_id, &user.id, None)
        .map_err(|_| ApiError::unknown_conversation())?;
    let replies = subscription.until_final(accepted.message_id);
    Ok(sse::response(state, Some(sse::accepted_event(accepted)), replies).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY_LEN)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_string()))
}

fn fingerprint(conversation_id: Option<Uuid>, text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    conversation_id.hash(&mut h);
    text.hash(&mut h);
    h.finish()
}
