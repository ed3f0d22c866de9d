//! Deletions against the Qdrant engine server: after `forget`, the responder's recall
//! (`recent_turns`, `similar`) returns nothing deleted, and a turn of a deleted
//! conversation that arrives later (its message accepted before the deletion) is not
//! stored again, while one accepted after it is.

use std::time::Duration;

use memory_store::store::{Memory, MemoryStore, StoreSettings};
use platform::events::{memory_point_id, Role};
use testkit::QdrantServer;
use uuid::Uuid;

fn turn(user: &str, conversation_id: Uuid, role: Role, text: &str, ts_ms: i64) -> Memory {
    let message_id = Uuid::new_v4();
    Memory {
        point_id: memory_point_id(message_id, role),
        conversation_id,
        user_id: user.into(),
        role,
        text: text.into(),
        ts_ms,
        message_ts_ms: ts_ms,
        message_id,
    }
}

/// A made-up 4-dimensional vector per text, so the test needs no model.
fn vector(text: &str) -> Vec<f32> {
    let n = text.len() as f32;
    vec![1.0, n, 0.5, 1.0 / (n + 1.0)]
}

async fn store(store: &MemoryStore, turns: &[Memory]) -> Vec<Uuid> {
    let points: Vec<(Memory, Vec<f32>)> = turns.iter().map(|m| (m.clone(), vector(&m.text))).collect();
    store.upsert(&points).await.expect("upsert").point_ids
}

async fn recalled(store: &MemoryStore, user: &str, conversation: Uuid) -> Vec<String> {
    let mut texts: Vec<String> = store
        .recent_turns(user, conversation, 50)
        .await
        .expect("recent")
        .into_iter()
        .map(|m| m.text)
        .collect();
    let similar = store.similar(user, vector("anything"), 50).await.expect("similar");
    texts.extend(similar.into_iter().map(|(m, _)| m.text));
    texts
}

#[tokio::test(flavor = "multi_thread")]
async fn recall_never_returns_a_deleted_turn_and_late_turns_stay_deleted() {
    let qdrant = QdrantServer::start().expect("qdrant");
    let settings = StoreSettings { url: qdrant.url(), api_key: None, collection: "chat_memory".into() };
    let memory = MemoryStore::new(&settings, Duration::from_secs(10)).expect("store");
    let (doomed, kept) = (Uuid::new_v4(), Uuid::new_v4());
    let before = chrono::Utc::now().timestamp_millis() - 1_000;
    store(
        &memory,
        &[
            turn("alice", doomed, Role::User, "doomed question", before),
            turn("alice", kept, Role::User, "kept question", before),
            turn("bob", doomed, Role::User, "bob's turn", before),
        ],
    )
    .await;
    assert_eq!(recalled(&memory, "alice", doomed).await.len(), 3, "recent + similar before deleting");

    let deletion = memory.forget("alice", Some(doomed)).await.expect("forget");
    assert_eq!(deletion.conversation_id, Some(doomed));
    let texts = recalled(&memory, "alice", doomed).await;
    assert_eq!(texts, ["kept question"], "only the other conversation's turn is recalled");

    // A reply to the doomed question, finishing now, and a message accepted after the
    // deletion: the first is dropped (and reported), the second stored.
    let mut late_reply = turn("alice", doomed, Role::Assistant, "doomed reply", deletion.ts_ms + 5_000);
    late_reply.message_ts_ms = before;
    let fresh = turn("alice", doomed, Role::User, "fresh start", deletion.ts_ms + 1);
    let dropped = store(&memory, &[late_reply.clone(), fresh]).await;
    assert_eq!(dropped, [late_reply.point_id]);
    let recent: Vec<String> =
        memory.recent_turns("alice", doomed, 50).await.expect("recent").into_iter().map(|m| m.text).collect();
    assert_eq!(recent, ["fresh start"]);

    // Forget me: everything of alice, nothing of bob.
    memory.forget("alice", None).await.expect("forget me");
    assert!(recalled(&memory, "alice", kept).await.is_empty());
    assert!(memory.latest("alice", 50).await.expect("latest").is_empty());
    let bobs: Vec<String> =
        memory.latest("bob", 50).await.expect("latest").into_iter().map(|m| m.text).collect();
    assert_eq!(bobs, ["bob's turn"]);
}
