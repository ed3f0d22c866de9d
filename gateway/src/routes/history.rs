//! `GET /conversations`, `GET /conversations/{id}/messages`, `DELETE
//! /conversations/{id}`: the caller's stored conversations (see docs/ARCHITECTURE.md,
//! "History and deletion"). Another user's conversation is answered as unknown (404).

use std::collections::HashMap;

use axum::{
    extract::{rejection::QueryRejection, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use memory_store::store::Memory;
use platform::events::Role;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    auth::User,
    error::ApiError,
    history::{limit, rfc3339},
    state::AppState,
};

/// Longest title, in characters (the ellipsis included).
const TITLE_CHARS: usize = 80;

/// The query of the paginated history routes.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    /// Items per page.
    pub limit: Option<u32>,
    /// Where the previous page ended (`next_cursor`).
    pub cursor: Option<String>,
}

/// `GET /conversations?limit=N&cursor=C`: the caller's conversations, newest first.
pub async fn list(
    State(state): State<AppState>,
    user: User,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(query) = query?;
    let limit = limit(query.limit, 20, 100)?;
    let after = query.cursor.as_deref().map(ConversationCursor::parse).transpose()?;
    let history = state.history()?;
    let mut summaries = summarize(history.user_turns(&user.id).await?);
    summaries.sort_by_key(|s| std::cmp::Reverse(s.key()));
    let mut page: Vec<Summary> =
        summaries.into_iter().filter(|s| after.is_none_or(|c| s.key() < c.key())).take(limit + 1).collect();
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|s| ConversationCursor { last_ts_ms: s.last_ts_ms, id: s.conversation_id }.render())
    });
    let title_ids: Vec<Uuid> = page.iter().filter_map(|s| s.first_user_turn.map(|(_, id)| id)).collect();
    let titles: HashMap<Uuid, String> =
        history.turns_by_id(&user.id, &title_ids).await?.into_iter().map(|m| (m.point_id, m.text)).collect();
    let conversations: Vec<Value> = page
        .iter()
        .map(|s| {
            let title = s.first_user_turn.and_then(|(_, id)| titles.get(&id)).map(|t| title(t));
            json!({
                "conversation_id": s.conversation_id,
                "title": title.unwrap_or_default(),
                "last_ts": rfc3339(s.last_ts_ms),
                "turns": s.turns,
            })
        })
        .collect();
    Ok(Json(json!({ "conversations": conversations, "next_cursor": next_cursor.flatten() })))
}

/// `GET /conversations/{id}/messages?limit=N&cursor=C`: the turns, oldest first; a
/// reply still streaming is an empty `streaming` entry at the end.
pub async fn messages(
    State(state): State<AppState>,
    user: User,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let conversation_id = owned(&state, &user, id)?;
    let Query(query) = query?;
    let limit = limit(query.limit, 100, 500)?;
    let after = query.cursor.as_deref().map(MessageCursor::parse).transpose()?;
    let history = state.history()?;
    let turns = history.conversation(&user.id, conversation_id).await?;
    let mut page: Vec<&Memory> =
        turns.iter().filter(|m| after.is_none_or(|c| MessageCursor::of(m) > c)).take(limit + 1).collect();
    let next_cursor = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|m| MessageCursor::of(m).render())
    });
    let mut messages: Vec<Value> = page.iter().map(|m| turn_json(m)).collect();
    if next_cursor.is_none() {
        // The newest replies may still be on their way: shown as such, never half.
        for (message_id, started_ms) in state.hub.replies_in_progress(conversation_id, &user.id) {
            let answered = turns.iter().any(|m| m.message_id == message_id && m.role == Role::Assistant);
            if !answered {
                messages.push(json!({
                    "message_id": message_id,
                    "role": "assistant",
                    "text": "",
                    "ts": rfc3339(started_ms),
                    "status": "streaming",
                }));
            }
        }
    }
    Ok(Json(json!({
        "conversation_id": conversation_id,
        "messages": messages,
        "next_cursor": next_cursor.flatten(),
    })))
}

/// `DELETE /conversations/{id}`: 202 once the deletion is recorded and the stored
/// turns are gone; idempotent.
pub async fn delete(
    State(state): State<AppState>,
    user: User,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let conversation_id = owned(&state, &user, id)?;
    let deletion = state.history()?.forget(&user.id, Some(conversation_id)).await?;
    state.hub.drop_conversation(conversation_id, &user.id);
    tracing::info!(%conversation_id, deletion_id = %deletion.deletion_id, "conversation deleted");
    let body = json!({ "deletion_id": deletion.deletion_id, "conversation_id": conversation_id });
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The conversation id of the path, if it is the caller's (else 404, as unknown).
fn owned(
    state: &AppState,
    user: &User,
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Uuid, ApiError> {
    match id {
        Ok(Path(id)) if state.intake.ids.is_owned_by(&id, &user.id) => Ok(id),
        _ => Err(ApiError::unknown_conversation()),
    }
}

/// One turn as the API shows it.
fn turn_json(m: &Memory) -> Value {
    json!({
        "message_id": m.message_id,
        "role": m.role.as_str(),
        "text": m.text,
        "ts": rfc3339(m.ts_ms),
        "status": "complete",
    })
}

/// A conversation as the list shows it.
struct Summary {
    conversation_id: Uuid,
    last_ts_ms: i64,
    turns: usize,
    /// The time and point id of its first user turn (its title).
    first_user_turn: Option<(i64, Uuid)>,
}

impl Summary {
    fn key(&self) -> (i64, Uuid) {
        (self.last_ts_ms, self.conversation_id)
    }
}

fn summarize(turns: Vec<Memory>) -> Vec<Summary> {
    let mut by_id: HashMap<Uuid, Summary> = HashMap::new();
    for m in turns {
        let s = by_id.entry(m.conversation_id).or_insert(Summary {
            conversation_id: m.conversation_id,
            last_ts_ms: m.ts_ms,
            turns: 0,
            first_user_turn: None,
        });
        s.turns += 1;
        s.last_ts_ms = s.last_ts_ms.max(m.ts_ms);
        if m.role == Role::User && s.first_user_turn.is_none_or(|(ts, _)| m.ts_ms < ts) {
            s.first_user_turn = Some((m.ts_ms, m.point_id));
        }
    }
    by_id.into_values().collect()
}

/// The first message as a title: whitespace folded, at most [`TITLE_CHARS`]
/// characters, cut on a character boundary with `…` when longer.
fn title(text: &str) -> String {
    let folded = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= TITLE_CHARS {
        return folded;
    }
    let mut cut: String = folded.chars().take(TITLE_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// Where a page of conversations ended: the last one's time and id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConversationCursor {
    last_ts_ms: i64,
    id: Uuid,
}

impl ConversationCursor {
    fn key(&self) -> (i64, Uuid) {
        (self.last_ts_ms, self.id)
    }

    fn render(&self) -> String {
        format!("c{}_{}", self.last_ts_ms, self.id.simple())
    }

    fn parse(text: &str) -> Result<Self, ApiError> {
        let parsed = text.strip_prefix('c').and_then(|rest| {
            let (ts, id) = rest.split_once('_')?;
            Some(Self { last_ts_ms: ts.parse().ok()?, id: Uuid::try_parse(id).ok()? })
        });
        parsed.ok_or_else(bad_cursor)
    }
}

/// Where a page of messages ended: the last turn's place in the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MessageCursor {
    ts_ms: i64,
    /// A reply sorts after its question when both have the same time.
    reply: bool,
    point_id: Uuid,
}

impl MessageCursor {
    fn of(m: &Memory) -> Self {
        Self { ts_ms: m.ts_ms, reply: m.role != Role::User, point_id: m.point_id }
    }

    fn render(&self) -> String {
        format!("m{}_{}_{}", self.ts_ms, u8::from(self.reply), self.point_id.simple())
    }

    fn parse(text: &str) -> Result<Self, ApiError> {
        let parsed = text.strip_prefix('m').and_then(|rest| {
            let mut parts = rest.splitn(3, '_');
            let ts_ms = parts.next()?.parse().ok()?;
            let reply = match parts.next()? {
                "0" => false,
                "1" => true,
                _ => return None,
            };
            Some(Self { ts_ms, reply, point_id: Uuid::try_parse(parts.next()?).ok()? })
        });
        parsed.ok_or_else(bad_cursor)
    }
}

fn bad_cursor() -> ApiError {
    ApiError::bad_request("invalid_cursor", "cursor must be a next_cursor this route returned")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_cut_on_a_char_boundary_with_an_ellipsis() {
        assert_eq!(title("  Hello\n  world "), "Hello world");
        let long = "é".repeat(100);
        let t = title(&long);
        assert_eq!(t.chars().count(), TITLE_CHARS);
        assert!(t.ends_with('…'));
        assert_eq!(title(&"a".repeat(80)), "a".repeat(80));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = ConversationCursor { last_ts_ms: 1_700_000_000_000, id: Uuid::new_v4() };
        assert_eq!(ConversationCursor::parse(&c.render()).ok(), Some(c));
        let m = MessageCursor { ts_ms: 5, reply: true, point_id: Uuid::new_v4() };
        assert_eq!(MessageCursor::parse(&m.render()).ok(), Some(m));
        for bad in ["", "x", "c1_", "m1_2_00", "c-_abc", &m.render()[1..]] {
            assert!(ConversationCursor::parse(bad).is_err() && MessageCursor::parse(bad).is_err(), "{bad}");
        }
    }
}
