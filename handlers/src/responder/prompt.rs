//! The prompt: the system prompt, the conversation's recent turns, then the new
//! message with what memory recalled in front of it. A pure function, so what reaches the model is tested
//! directly.

use platform::events::{Role, UserMessage};

use crate::store::Memory;

/// The system prompt used when `SYSTEM_PROMPT` is not set.
pub const DEFAULT_SYSTEM_PROMPT: &str =
    "You are a helpful, concise assistant. Use what you remember about the user when it helps.";

/// Longest text, in characters, that a recalled memory or an earlier turn brings into
/// the prompt; longer ones are cut (with "…"). One long message must not fill the
/// model's context in every later prompt of its user: a 13 kB message recalled as a
/// "similar memory" made llama-server refuse every later prompt of the user (2048-token
/// context). The new message itself is never cut: the LLM's answer to it is the user's.
pub const MAX_RECALLED_CHARS: usize = 600;

/// Who speaks in one message of the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptRole {
    /// The instructions (the system prompt and what memory recalled).
    System,
    /// The user.
    User,
    /// The model, in earlier turns.
    Assistant,
}

impl PromptRole {
    /// The role's name in the chat API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

impl From<Role> for PromptRole {
    fn from(role: Role) -> Self {
        match role {
            Role::User => Self::User,
            Role::Assistant => Self::Assistant,
        }
    }
}

impl std::fmt::Display for PromptRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of the prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// Who speaks.
    pub role: PromptRole,
    /// Its text.
    pub content: String,
}

/// Builds the prompt. `similar` holds memories from any of the user's conversations;
/// those already among `recent` are not repeated.
///
/// The order keeps the prompt of a conversation's next message an extension of this
/// one's: the system prompt and the earlier turns come first, unchanged, and what memory
/// recalled (different for every message) rides on the new message at the end. An LLM
/// server that caches prompts (llama-server: per slot and in host memory) then only
/// reads the new tail; with the memories in the system prompt every prompt differed from
/// its first lines on and was read whole (docs/PERFORMANCE.md, "The local LLM"). They
/// join the user's message rather than a second system message because many chat
/// templates refuse a system message after the first.
pub fn build(
    system: &str,
    similar: &[Memory],
    recent: &[Memory],
    message: &UserMessage,
) -> Vec<PromptMessage> {
    let mut prompt = vec![PromptMessage { role: PromptRole::System, content: system.to_string() }];
    prompt.extend(
        recent
            .iter()
            .filter(|m| m.message_id != message.message_id)
            .map(|m| PromptMessage { role: m.role.into(), content: shortened(&m.text) }),
    );
    let extra: Vec<&Memory> = similar
        .iter()
        .filter(|m| m.message_id != message.message_id && !recent.iter().any(|r| r.point_id == m.point_id))
        .collect();
    let mut content = String::new();
    if !extra.is_empty() {
        content.push_str(RECALLED_HEADING);
        for m in extra {
            let who = match m.role {
                Role::User => "The user said",
                Role::Assistant => "You said",
            };
            content.push_str(&format!("\n- {who}: {}", shortened(&m.text)));
        }
        content.push_str("]\n\n");
    }
    content.push_str(&message.text);
    prompt.push(PromptMessage { role: PromptRole::User, content });
    prompt
}

/// What opens the recalled memories in front of the new message.
const RECALLED_HEADING: &str = "[What you remember from earlier conversations with this user:";

/// `text`, cut to [`MAX_RECALLED_CHARS`] characters.
fn shortened(text: &str) -> String {
    match text.char_indices().nth(MAX_RECALLED_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::memory::turn;

    #[test]
    fn recent_turns_become_chat_messages_and_similar_ones_join_the_system_prompt() {
        let msg = UserMessage::new(Uuid::new_v4(), "alice", "What is my cat called?");
        let earlier = Uuid::new_v4();
        let recent = vec![
            turn(earlier, msg.conversation_id, "alice".into(), Role::User, "Hi there".into(), 1),
            turn(earlier, msg.conversation_id, "alice".into(), Role::Assistant, "Hello!".into(), 2),
        ];
        let other =
            turn(Uuid::new_v4(), Uuid::new_v4(), "alice".into(), Role::User, "My cat is Tom".into(), 0);
        // Recalled twice (similar and recent) and the message itself: neither repeats.
        let itself =
            turn(msg.message_id, msg.conversation_id, "alice".into(), Role::User, msg.text.clone(), 3);
        let similar = vec![other, recent[0].clone(), itself.clone()];
        let recent_with_itself = [recent.clone(), vec![itself]].concat();
        let prompt = build("Be brief.", &similar, &recent_with_itself, &msg);
        let roles: Vec<_> = prompt.iter().map(|m| m.role).collect();
        assert_eq!(roles, [PromptRole::System, PromptRole::User, PromptRole::Assistant, PromptRole::User]);
        assert_eq!(prompt[0].content, "Be brief.", "the system prompt is the same for every message");
        assert_eq!(
            prompt[3].content,
            "[What you remember from earlier conversations with this user:\n- The user said: My cat is Tom]\n\n\
             What is my cat called?"
        );
    }

    #[test]
    fn the_next_messages_prompt_extends_this_ones() {
        let first = UserMessage::new(Uuid::new_v4(), "alice", "My cat is Tom");
        let earlier =
            turn(Uuid::new_v4(), Uuid::new_v4(), "alice".into(), Role::User, "I live in Oslo".into(), 0);
        let before = build("Be brief.", std::slice::from_ref(&earlier), &[], &first);
        let second = UserMessage::new(first.conversation_id, "alice", "What is my cat called?");
        let recent = vec![
            turn(first.message_id, first.conversation_id, "alice".into(), Role::User, first.text.clone(), 1),
            turn(first.message_id, first.conversation_id, "alice".into(), Role::Assistant, "Nice!".into(), 2),
        ];
        let other = turn(Uuid::new_v4(), Uuid::new_v4(), "alice".into(), Role::User, "I like tea".into(), 0);
        let after = build("Be brief.", &[other, earlier], &recent, &second);
        // Everything but the new message is kept, and the earlier message comes back as
        // the user wrote it: the server's cached prompt ends where the memories began.
        assert_eq!(after[..before.len() - 1], before[..before.len() - 1]);
        assert_eq!(after[before.len() - 1].content, first.text);
        assert!(before[before.len() - 1].content.ends_with(&first.text));
    }

    #[test]
    fn long_memories_are_cut_and_the_new_message_is_not() {
        let long = "é".repeat(MAX_RECALLED_CHARS * 20);
        let msg = UserMessage::new(Uuid::new_v4(), "alice", long.clone());
        let old = turn(Uuid::new_v4(), Uuid::new_v4(), "alice".into(), Role::User, long.clone(), 0);
        let recent = turn(Uuid::new_v4(), msg.conversation_id, "alice".into(), Role::User, long.clone(), 1);
        let prompt = build("Be brief.", &[old], &[recent], &msg);
        let cut = format!("{}…", "é".repeat(MAX_RECALLED_CHARS));
        assert_eq!(prompt[1].content, cut);
        let last = &prompt[2].content;
        assert!(last.contains(&format!("The user said: {cut}]")), "{}", last.len());
        assert!(last.ends_with(&format!("]\n\n{long}")), "the message itself is whole");
    }

    #[test]
    fn without_memories_the_prompt_is_the_system_prompt_and_the_message() {
        let msg = UserMessage::new(Uuid::new_v4(), "bob", "Hello");
        let prompt = build(DEFAULT_SYSTEM_PROMPT, &[], &[], &msg);
        assert_eq!(prompt.len(), 2);
        assert_eq!(prompt[0].content, DEFAULT_SYSTEM_PROMPT);
    }

    #[test]
    fn roles_are_named_as_the_chat_api_names_them() {
        let names: Vec<_> = [PromptRole::System, PromptRole::User, PromptRole::Assistant]
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(names, ["system", "user", "assistant"]);
        assert_eq!(PromptRole::from(Role::Assistant), PromptRole::Assistant);
    }
}
