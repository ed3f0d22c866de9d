//! What reaches the model: the responder's prompt for a message, built from memories in
//! the real Qdrant engine, embedded in-process.

use std::time::Duration;

use handlers::{
    embed::{Embedder, EmbedderSettings},
    memory::turn,
    responder::{Recall, Responder, ResponderSettings},
    store::{MemoryStore, StoreSettings},
};
use platform::{
    events::{Role, UserMessage},
    settings::Env,
};
use testkit::QdrantServer;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread")]
async fn prompts_hold_the_users_own_memories_and_never_another_users() {
    testkit::require_env(&["EMBED_MODEL_DIR"]).expect("EMBED_MODEL_DIR");
    let qdrant = QdrantServer::start().expect("qdrant");
    let env = Env::from_pairs([
        ("QDRANT_URL", qdrant.url()),
        ("EMBED_MODEL_DIR", std::env::var("EMBED_MODEL_DIR").expect("EMBED_MODEL_DIR")),
        ("LLM_BASE_URL", "http://127.0.0.1:9/v1".into()),
        ("LLM_MODEL", "unused".into()),
    ]);
    let settings = ResponderSettings::from_env(&env).expect("settings");
    let store = MemoryStore::new(&StoreSettings::from_env(&env).expect("store"), Duration::from_secs(5))
        .expect("store");
    let embedder = Embedder::build(EmbedderSettings::from_env(&env).expect("embedder")).await.expect("model");

    let (alice_chat, bob_chat) = (Uuid::new_v4(), Uuid::new_v4());
    let memories = [
        turn(Uuid::new_v4(), alice_chat, "alice".into(), Role::User, "My bank PIN is 4921.".into(), 1),
        turn(Uuid::new_v4(), alice_chat, "alice".into(), Role::User, "I am allergic to peanuts.".into(), 2),
        turn(Uuid::new_v4(), bob_chat, "bob".into(), Role::User, "My bank PIN is 1357.".into(), 3),
    ];
    let texts = memories.iter().map(|m| m.text.clone()).collect();
    let vectors = embedder.embed(texts).await.expect("embed");
    store.upsert(&memories.iter().cloned().zip(vectors).collect::<Vec<_>>()).await.expect("upsert");

    let recall = Recall { store, embedder, recent_turns: settings.recent_turns, top_k: settings.top_k };
    let responder = Responder::new(settings.llm.client().expect("client"), &settings, recall);
    let text = |prompt: Vec<handlers::responder::prompt::PromptMessage>| {
        prompt.into_iter().map(|m| format!("{}: {}\n", m.role, m.content)).collect::<String>()
    };

    // Bob, in a new conversation, asking about "his" PIN: only his own memory.
    let bob = text(responder.prompt_for(&UserMessage::new(Uuid::new_v4(), "bob", "What is my PIN?")).await);
    assert!(bob.contains("1357"), "{bob}");
    assert!(
        !bob.contains("4921") && !bob.contains("peanuts"),
        "alice's memories leaked into bob's prompt:\n{bob}"
    );

    // Alice in her conversation: its turns come as chat history.
    let alice = text(responder.prompt_for(&UserMessage::new(alice_chat, "alice", "What is my PIN?")).await);
    assert!(alice.contains("user: My bank PIN is 4921."), "{alice}");
    assert!(!alice.contains("1357"), "bob's memory leaked into alice's prompt:\n{alice}");

    // A user with no memories gets none.
    let carol =
        text(responder.prompt_for(&UserMessage::new(Uuid::new_v4(), "carol", "What is my PIN?")).await);
    assert!(!carol.contains("PIN is"), "{carol}");
}
