//! One conversation's SSE stream: `GET /stream?conversation_id=…`, read until the run
//! ends, reopened with `Last-Event-ID` whenever it ends early (a `shutdown` event, a
//! broken connection, a slow-client cut-off, or silence longer than the idle timeout).

use std::{sync::Arc, time::Duration};

use eventsource_stream::{Event, Eventsource};
use futures::StreamExt;
use reqwest::Url;
use serde::Deserialize;
use tokio::sync::watch;
use uuid::Uuid;

use crate::tracker::{EventKind, ReplyEvent, Tracker};

/// What the stream of one conversation needs.
pub struct StreamTarget {
    /// The SSE client (no overall timeout; a read timeout for silence).
    pub client: reqwest::Client,
    /// The gateway's base URL.
    pub base: Url,
    /// Bearer token, if the gateway checks them.
    pub token: Option<String>,
    /// The conversation number (0-based) in this run.
    pub conversation: usize,
    /// The conversation id the gateway issued.
    pub conversation_id: Uuid,
}

/// What one SSE event means to the load test.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// An event of one message.
    Reply(ReplyEvent),
    /// Events older than the replay window were lost.
    Gap,
    /// The replica is stopping; reconnect.
    Shutdown,
    /// An event the load test does not use.
    Other,
    /// A reply event whose data could not be read.
    Malformed,
}

#[derive(Deserialize)]
struct Data {
    message_id: Uuid,
    attempt: Option<Uuid>,
    #[serde(default)]
    delta: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    code: String,
}

/// Reads one SSE event of `/stream`.
pub fn parse(event: &Event) -> Parsed {
    let kind = event.event.as_str();
    match kind {
        "gap" => return Parsed::Gap,
        "shutdown" => return Parsed::Shutdown,
        "token" | "done" | "error" | "reset" => {}
        _ => return Parsed::Other,
    }
    let Ok(data) = serde_json::from_str::<Data>(&event.data) else { return Parsed::Malformed };
    let kind = match kind {
        "token" => EventKind::Token { delta: data.delta },
        "done" => EventKind::Done { text: data.text },
        "error" => EventKind::Error { code: if data.code.is_empty() { "unknown".into() } else { data.code } },
        _ => EventKind::Reset,
    };
    Parsed::Reply(ReplyEvent { message_id: data.message_id, attempt: data.attempt, kind })
}

/// Follows the stream until `stop` turns true, feeding every event to `tracker`.
pub async fn follow(target: StreamTarget, tracker: Arc<Tracker>, mut stop: watch::Receiver<bool>) {
    let mut url = target.base.clone();
    url.set_path("/stream");
    url.set_query(Some(&format!("conversation_id={}", target.conversation_id)));
    let mut last_event_id: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    loop {
        if *stop.borrow() {
            return;
        }
        if !first {
            tracker.reconnected();
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        first = false;
        let mut request = target.client.get(url.clone()).header("accept", "text/event-stream");
        if let Some(token) = &target.token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = &last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = tokio::select! {
            r = request.send() => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        let response = match response {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                tracker.stream_refused(r.status().as_u16());
                continue;
            }
            Err(_) => continue,
        };
        let mut events = response.bytes_stream().eventsource();
        loop {
            let next = tokio::select! {
                n = events.next() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            // None: the server ended the stream; Err: broken or silent (read timeout).
            let Some(Ok(event)) = next else { break };
            backoff = Duration::from_millis(100);
            if !event.id.is_empty() {
                last_event_id = Some(event.id.clone());
            }
            match parse(&event) {
                Parsed::Reply(reply) => tracker.event(reply),
                Parsed::Gap => tracker.gap(target.conversation),
                Parsed::Shutdown => {
                    tracker.shutdown_event();
                    break;
                }
                Parsed::Malformed => tracker.malformed(),
                Parsed::Other => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: &str) -> Event {
        Event { event: kind.into(), data: data.into(), id: "0-1".into(), retry: None }
    }

    #[test]
    fn the_gateways_events_are_read() {
        let (m, a) = (Uuid::new_v4(), Uuid::new_v4());
        let base = format!(r#""message_id":"{m}","conversation_id":"{}","attempt":"{a}""#, Uuid::new_v4());
        let reply = |kind| Parsed::Reply(ReplyEvent { message_id: m, attempt: Some(a), kind });
        assert_eq!(
            parse(&event("token", &format!(r#"{{{base},"seq":0,"delta":"Hi"}}"#))),
            reply(EventKind::Token { delta: "Hi".into() })
        );
        assert_eq!(
            parse(&event("done", &format!(r#"{{{base},"text":"Hi","usage":null,"finish_reason":"stop"}}"#))),
            reply(EventKind::Done { text: "Hi".into() })
        );
        assert_eq!(
            parse(&event("error", &format!(r#"{{{base},"code":"llm_unavailable","message":"down"}}"#))),
            reply(EventKind::Error { code: "llm_unavailable".into() })
        );
        assert_eq!(
            parse(&event("reset", &format!(r#"{{{base},"reason":"again"}}"#))),
            reply(EventKind::Reset)
        );
        assert_eq!(parse(&event("gap", r#"{"reason":"lost"}"#)), Parsed::Gap);
        assert_eq!(parse(&event("shutdown", r#"{"reason":"bye"}"#)), Parsed::Shutdown);
        assert_eq!(parse(&event("message", "hello")), Parsed::Other);
        assert_eq!(parse(&event("token", "not json")), Parsed::Malformed);
    }
}
