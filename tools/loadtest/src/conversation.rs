//! A virtual user's conversation: `POST /chat` for each of its messages, and its SSE
//! stream, opened once the first message returned the conversation id.

use std::{sync::Arc, time::Duration};

use platform::sync::lock;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{watch, Mutex};
use uuid::Uuid;

use crate::{
    schedule::Planned,
    stream::{self, StreamTarget},
    tracker::Tracker,
};

/// What every conversation shares.
pub struct Shared {
    /// Client for `POST /chat` (bounded by the request timeout).
    pub post_client: reqwest::Client,
    /// Client for the SSE streams (read timeout only).
    pub sse_client: reqwest::Client,
    /// The gateway's base URL.
    pub base: Url,
    /// The message text template.
    pub text: String,
    /// The record of the run.
    pub tracker: Arc<Tracker>,
    /// Turns true when the run ends; streams stop reading.
    pub stop: watch::Receiver<bool>,
}

/// One conversation of the run.
pub struct Conversation {
    index: usize,
    token: Option<String>,
    /// The conversation id once a POST returned one. Held while the first POST is out,
    /// so the conversation's next messages wait for its id instead of starting new ones.
    id: Mutex<Option<Uuid>>,
    stream: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[derive(Deserialize)]
struct Accepted {
    message_id: Uuid,
    conversation_id: Uuid,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
}

/// The text of message `index` of conversation `conversation` (1-based numbers in the text).
pub fn message_text(template: &str, index: usize, conversation: usize) -> String {
    template
        .replace("{message}", &(index + 1).to_string())
        .replace("{conversation}", &(conversation + 1).to_string())
}

impl Conversation {
    /// Conversation number `index`, authenticating with `token`.
    pub fn new(index: usize, token: Option<String>) -> Self {
        Self { index, token, id: Mutex::new(None), stream: std::sync::Mutex::new(None) }
    }

    /// Sends `planned` (its POST, then the tracker gets the outcome). The first accepted
    /// message opens the conversation's stream.
    pub async fn send(&self, shared: &Shared, planned: Planned) {
        let mut id = self.id.lock().await;
        let conversation_id = *id;
        if conversation_id.is_some() {
            // Later messages of a started conversation go out concurrently.
            drop(id);
            self.post(shared, planned, conversation_id).await;
        } else if let Some(accepted) = self.post(shared, planned, None).await {
            *id = Some(accepted.conversation_id);
            self.open_stream(shared, accepted.conversation_id);
        }
    }

    async fn post(
        &self,
        shared: &Shared,
        planned: Planned,
        conversation_id: Option<Uuid>,
    ) -> Option<Accepted> {
        let mut url = shared.base.clone();
        url.set_path("/chat");
        let text = message_text(&shared.text, planned.index, self.index);
        let body = match conversation_id {
            Some(id) => json!({"conversation_id": id, "text": text}),
            None => json!({"text": text}),
        };
        let mut request = shared.post_client.post(url).json(&body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let tracker = &shared.tracker;
        tracker.sent(planned.index);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                tracker.failed(planned.index, describe(&e));
                return None;
            }
        };
        let status = response.status();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => {
                tracker.failed(planned.index, describe(&e));
                return None;
            }
        };
        if status != StatusCode::ACCEPTED {
            let code = serde_json::from_slice::<ErrorBody>(&body).ok().map(|b| b.error.code);
            tracker.rejected(planned.index, status.as_u16(), code);
            return None;
        }
        match serde_json::from_slice::<Accepted>(&body) {
            Ok(accepted) => {
                tracker.accepted(planned.index, accepted.message_id);
                Some(accepted)
            }
            Err(e) => {
                tracker.failed(planned.index, format!("202 without message_id/conversation_id: {e}"));
                None
            }
        }
    }

    fn open_stream(&self, shared: &Shared, conversation_id: Uuid) {
        let target = StreamTarget {
            client: shared.sse_client.clone(),
            base: shared.base.clone(),
            token: self.token.clone(),
            conversation: self.index,
            conversation_id,
        };
        let handle = tokio::spawn(stream::follow(target, shared.tracker.clone(), shared.stop.clone()));
        let mut slot = lock(&self.stream);
        if let Some(old) = slot.replace(handle) {
            old.abort();
        }
    }

    /// Waits (bounded) for the stream task to notice the end of the run.
    pub async fn close(&self, grace: Duration) {
        let handle = lock(&self.stream).take();
        if let Some(handle) = handle {
            let abort = handle.abort_handle();
            if tokio::time::timeout(grace, handle).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// A transport error in one line, with its cause (reqwest's own text hides it).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connect failed"
    } else {
        "request failed"
    };
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_numbers_messages_and_conversations_from_one() {
        assert_eq!(message_text("m{message} c{conversation} {message}", 0, 4), "m1 c5 1");
        assert_eq!(message_text("plain", 9, 9), "plain");
    }
}
