//! The prompt: the system prompt, what memory recalled, the conversation's recent
//! turns, then the new message. A pure function, so what reaches the model is tested
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
pub fn build(
    system: &str,
    similar: &[Memory],
    recent: &[Memory],
    message: &UserMessage,
) -> Vec<PromptMessage> {
    let mut system = system.to_string();
    let extra: Vec<&Memory> = similar
        .iter()
        .filter(|m| m.message_id != message.message_id && !recent.iter().any(|r| r.point_id == m.point_id))
        .collect();
    if !extra.is_empty() {
        system.push_str("\n\nWhat you remember from earlier conversations with this user:");
        for m in extra {
            let who = match m.role {
                Role::User => "The user said",
                Role::Assistant => "You said",
            };
            system.push_str(&format!("\n- {who}: {}", shortened(&m.text)));
        }
    }
    let mut prompt = vec![PromptMessage { role: PromptRole::System, content: system }];
    prompt.extend(
        recent
            .iter()
            .filter(|m| m.message_id != message.message_id)
            .map(|m| PromptMessage { role: m.role.into(), content: shortened(&m.text) }),
    );
    prompt.push(PromptMessage { role: PromptRole::User, content: message.text.clone() });
    prompt
}

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
        assert_eq!(prompt[0].content, "Be brief.\n\nWhat you remember from earlier conversations with this user:\n- The user said: My cat is Tom");
        assert_eq!(prompt[3].content, "What is my cat called?");
    }

    #[test]
    fn long_memories_are_cut_and_the_new_message_is_not() {
        let long = "é".repeat(MAX_RECALLED_CHARS * 20);
        let msg = UserMessage::new(Uuid::new_v4(), "alice", long.clone());
        let old = turn(Uuid::new_v4(), Uuid::new_v4(), "alice".into(), Role::User, long.clone(), 0);
        let recent = turn(Uuid::new_v4(), msg.conversation_id, "alice".into(), Role::User, long.clone(), 1);
        let prompt = build("Be brief.", &[old], &[recent], &msg);
        let cut = format!("{}…", "é".repeat(MAX_RECALLED_CHARS));
        assert!(prompt[0].content.ends_with(&format!("The user said: {cut}")), "{}", prompt[0].content.len());
        assert_eq!(prompt[1].content, cut);
        assert_eq!(prompt[2].content, long, "the message itself is whole");
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
