//! Deletions that stay final: a tombstone per deleted conversation (and one per user
//! for "forget me"), kept in a small collection next to the turns
//! (`<collection>_deletions`).
//!
//! A turn still in flight through Kafka when its conversation is deleted reaches the
//! memory worker after the delete-by-filter ran; without a record of the deletion it
//! would be stored again. So a deletion writes its tombstone *before* deleting, and the
//! worker (see [`crate::store::MemoryStore::upsert`]) drops every turn a tombstone
//! covers, then looks again after its own upsert and deletes what a deletion made in
//! between covers. Reads filter through the tombstones too, so the short window
//! between such an upsert and its clean-up is never shown.
//!
//! A tombstone covers a turn of its user (and conversation, unless it is a "forget
//! me") whose message was accepted at or before the deletion: the turn's
//! [`Memory::message_ts_ms`], which for a reply is the time of the message it answers,
//! so a reply still being generated during the deletion is dropped with its message.
//! One tombstone per (user, conversation) and per user, overwritten by a later
//! deletion, so the collection grows with deleted conversations, not with deletions.

use std::{collections::HashMap, sync::Arc};

use anyhow::Context;
use qdrant_client::{
    qdrant::{
        CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, Distance, FieldType, GetPointsBuilder,
        PointId, PointStruct, UpsertPointsBuilder, VectorParamsBuilder,
    },
    Payload, Qdrant,
};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::store::{payload_int, point_uuid, Memory, StoreError};

/// Namespace of tombstone point ids (UUID v5 of the user and the conversation).
const TOMBSTONE_NAMESPACE: Uuid = Uuid::from_u128(0x64656c65_7469_6f6e_5f74_6f6d62737431);

/// One answered deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// A fresh id for this request (a repeated deletion gets a new one).
    pub deletion_id: Uuid,
    /// Whose turns.
    pub user_id: String,
    /// The conversation deleted, or `None` for everything of the user.
    pub conversation_id: Option<Uuid>,
    /// Turns whose message was accepted at or before this (ms since the epoch) are gone.
    pub ts_ms: i64,
}

/// The tombstone point id of a user's conversation, or of the user (`None`).
pub fn tombstone_id(user_id: &str, conversation_id: Option<Uuid>) -> Uuid {
    // Length-prefixed, so no user id can be shifted into the conversation part.
    let scope = conversation_id.map_or_else(|| "*".to_string(), |c| c.to_string());
    Uuid::new_v5(&TOMBSTONE_NAMESPACE, format!("{}:{user_id}/{scope}", user_id.len()).as_bytes())
}

/// The tombstones that apply to some turns, as read at one moment.
#[derive(Debug, Default, Clone)]
pub struct Tombstones {
    /// Deletion time (ms) by tombstone point id.
    ts_by_id: HashMap<Uuid, i64>,
}

impl Tombstones {
    /// True when a deletion covers `memory`.
    pub fn covers(&self, memory: &Memory) -> bool {
        [Some(memory.conversation_id), None].into_iter().any(|scope| {
            self.ts_by_id
                .get(&tombstone_id(&memory.user_id, scope))
                .is_some_and(|deleted| memory.message_ts_ms <= *deleted)
        })
    }

    /// True when no tombstone was found.
    pub fn is_empty(&self) -> bool {
        self.ts_by_id.is_empty()
    }
}

/// The tombstone collection.
pub(crate) struct Deletions {
    client: Arc<Qdrant>,
    collection: String,
    ready: OnceCell<()>,
}

impl Deletions {
    /// The tombstones of the turns collection `turns`.
    pub(crate) fn new(client: Arc<Qdrant>, turns: &str) -> Self {
        Self { client, collection: format!("{turns}_deletions"), ready: OnceCell::new() }
    }

    /// Creates the collection if missing (once per process). A tombstone needs no
    /// vector, but every Qdrant collection has one: a 1-dimensional constant.
    async fn ensure(&self) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                if !self.client.collection_exists(&self.collection).await.context("collection_exists")? {
                    let created = self
                        .client
                        .create_collection(
                            CreateCollectionBuilder::new(&self.collection)
                                .vectors_config(VectorParamsBuilder::new(1, Distance::Cosine)),
                        )
                        .await;
                    // The gateway and the workers may race to create it.
                    if let Err(err) = created {
                        if !self.client.collection_exists(&self.collection).await.unwrap_or(false) {
                            return Err(anyhow::Error::from(err).context("create_collection (deletions)"));
                        }
                    }
                }
                self.client
                    .create_field_index(
                        CreateFieldIndexCollectionBuilder::new(
                            &self.collection,
                            "user_id",
                            FieldType::Keyword,
                        )
                        .wait(true),
                    )
                    .await
                    .context("creating the payload index on user_id (deletions)")?;
                Ok(())
            })
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }

    /// Records a deletion durably (acknowledged by Qdrant) and returns it. A deletion
    /// never moves an existing tombstone back in time (replicas' clocks differ a little).
    pub(crate) async fn record(
        &self,
        user_id: &str,
        conversation_id: Option<Uuid>,
        now_ms: i64,
    ) -> Result<Deletion, StoreError> {
        self.ensure().await?;
        let id = tombstone_id(user_id, conversation_id);
        let existing = self.read(&[id]).await?;
        let ts_ms = existing.ts_by_id.get(&id).map_or(now_ms, |ts| (*ts).max(now_ms));
        let deletion =
            Deletion { deletion_id: Uuid::new_v4(), user_id: user_id.to_string(), conversation_id, ts_ms };
        let mut payload = serde_json::json!({
            "user_id": user_id,
            "ts": ts_ms,
            "deletion_id": deletion.deletion_id.to_string(),
        });
        if let Some(conversation_id) = conversation_id {
            payload["conversation_id"] = conversation_id.to_string().into();
        }
        let payload = Payload::try_from(payload).context("tombstone payload")?;
        let point = PointStruct::new(id.to_string(), vec![1.0_f32], payload);
        self.client
            .upsert_points(UpsertPointsBuilder::new(&self.collection, vec![point]).wait(true))
            .await
            .context("upsert tombstone")?;
        Ok(deletion)
    }

    /// The tombstones that could cover any of `memories`.
    pub(crate) async fn covering<'a>(
        &self,
        memories: impl IntoIterator<Item = &'a Memory>,
    ) -> Result<Tombstones, StoreError> {
        let mut ids: Vec<Uuid> = memories
            .into_iter()
            .flat_map(|m| [tombstone_id(&m.user_id, Some(m.conversation_id)), tombstone_id(&m.user_id, None)])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(Tombstones::default());
        }
        self.ensure().await?;
        self.read(&ids).await
    }

    async fn read(&self, ids: &[Uuid]) -> Result<Tombstones, StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(id.to_string())).collect();
        let response = self
            .client
            .get_points(GetPointsBuilder::new(&self.collection, ids).with_payload(true))
            .await
            .context("get tombstones")?;
        let ts_by_id = response
            .result
            .iter()
            .filter_map(|p| Some((point_uuid(p.id.as_ref())?, payload_int(&p.payload, "ts")?)))
            .collect();
        Ok(Tombstones { ts_by_id })
    }
}

#[cfg(test)]
mod tests {
    use platform::events::Role;

    use super::*;

    fn turn(user: &str, conversation: Uuid, message_ts_ms: i64) -> Memory {
        Memory {
            point_id: Uuid::new_v4(),
            conversation_id: conversation,
            user_id: user.into(),
            role: Role::Assistant,
            text: "t".into(),
            ts_ms: message_ts_ms + 5_000,
            message_ts_ms,
            message_id: Uuid::new_v4(),
        }
    }

    #[test]
    fn a_tombstone_covers_its_users_turns_accepted_at_or_before_it() {
        let (c, other) = (Uuid::new_v4(), Uuid::new_v4());
        let tombs = Tombstones { ts_by_id: HashMap::from([(tombstone_id("alice", Some(c)), 100)]) };
        assert!(tombs.covers(&turn("alice", c, 100)));
        assert!(tombs.covers(&turn("alice", c, 99)), "a reply finishing later is covered by its message");
        assert!(!tombs.covers(&turn("alice", c, 101)), "a message after the deletion is kept");
        assert!(!tombs.covers(&turn("alice", other, 50)), "other conversations are kept");
        assert!(!tombs.covers(&turn("bob", c, 50)), "other users are kept");
    }

    #[test]
    fn forget_me_covers_every_conversation_of_the_user_only() {
        let tombs = Tombstones { ts_by_id: HashMap::from([(tombstone_id("alice", None), 100)]) };
        assert!(tombs.covers(&turn("alice", Uuid::new_v4(), 100)));
        assert!(!tombs.covers(&turn("alice", Uuid::new_v4(), 101)));
        assert!(!tombs.covers(&turn("bob", Uuid::new_v4(), 1)));
    }

    #[test]
    fn tombstone_ids_cannot_collide_across_users() {
        let c = Uuid::new_v4();
        assert_ne!(tombstone_id("a", Some(c)), tombstone_id("a", None));
        assert_ne!(tombstone_id("a/x", None), tombstone_id("a", None));
        assert_eq!(tombstone_id("a", Some(c)), tombstone_id("a", Some(c)));
    }
}
