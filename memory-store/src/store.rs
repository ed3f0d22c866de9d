//! The memory store: one Qdrant collection of turns (cosine, vector size from the
//! embedder) with payload `{conversation_id, user_id, role, text, ts, message_id}` and
//! payload indexes on conversation_id, user_id and ts.
//!
//! Every read is filtered by `user_id`: memory never crosses users. Writes and reads
//! go through the deletions' tombstones ([`crate::deletions`]), so a deleted turn is
//! neither stored again nor shown.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::Context;
use chrono::Utc;
use platform::{
    events::Role,
    otel,
    settings::{Env, SettingsError},
};
use qdrant_client::{
    qdrant::{
        Condition, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder, DeletePointsBuilder,
        Direction, Distance, FieldType, Filter, OrderByBuilder, PayloadIncludeSelector, PointId, PointStruct,
        PointsIdsList, QueryPointsBuilder, RetrievedPoint, ScoredPoint, ScrollPointsBuilder,
        UpsertPointsBuilder, Value, VectorParamsBuilder,
    },
    Payload, Qdrant,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::OnceCell;
use tracing::Instrument;
use uuid::Uuid;

use crate::deletions::{Deletion, Deletions};

/// Points read per scroll page when a whole conversation (or a user's turns) is read.
const SCROLL_PAGE: u32 = 1024;

/// Where the store lives.
#[derive(Clone)]
pub struct StoreSettings {
    /// gRPC URL, e.g. `http://qdrant:6334`.
    pub url: String,
    /// API key, if the server wants one.
    pub api_key: Option<SecretString>,
    /// Collection name.
    pub collection: String,
}

impl std::fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[set]"))
            .field("collection", &self.collection)
            .finish()
    }
}

impl StoreSettings {
    /// Reads `QDRANT_URL`, `QDRANT_API_KEY[_FILE]` and `MEMORY_COLLECTION`.
    pub fn from_env(env: &Env) -> Result<Self, SettingsError> {
        let url = env.required("QDRANT_URL", "Qdrant's gRPC URL, e.g. http://qdrant:6334")?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(SettingsError::Invalid {
                name: "QDRANT_URL".into(),
                value: url,
                reason: "must start with http:// or https:// (the gRPC port, usually 6334)".into(),
            });
        }
        Ok(Self {
            url,
            api_key: env.secret("QDRANT_API_KEY")?,
            collection: env.optional("MEMORY_COLLECTION").unwrap_or_else(|| "chat_memory".into()),
        })
    }
}

/// One remembered turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Memory {
    /// Deterministic point id (UUID v5 of message id + role).
    pub point_id: Uuid,
    /// Conversation it belongs to.
    pub conversation_id: Uuid,
    /// Whose it is.
    pub user_id: String,
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// When, in milliseconds since the epoch.
    pub ts_ms: i64,
    /// When the user message this turn belongs to was accepted (ms): `ts_ms` for a user
    /// turn, the question's time for a reply. Deletions compare this (a reply finishing
    /// after its conversation was deleted is deleted with it).
    pub message_ts_ms: i64,
    /// The user message it belongs to.
    pub message_id: Uuid,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Qdrant could not be reached or is overloaded: try again later.
    #[error("qdrant unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// Qdrant refused the request (bad input, a collection of another vector size):
    /// retrying the same request cannot help.
    #[error("qdrant rejected the request: {0:#}")]
    Rejected(anyhow::Error),
}

impl From<anyhow::Error> for StoreError {
    fn from(err: anyhow::Error) -> Self {
        use tonic::Code;
        let rejected = err.chain().any(|cause| match cause.downcast_ref::<qdrant_client::QdrantError>() {
            Some(qdrant_client::QdrantError::ResponseError { status }) => matches!(
                status.code(),
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange | Code::Unimplemented
            ),
            Some(qdrant_client::QdrantError::ConversionError(_)) => true,
            _ => false,
        });
        if rejected {
            Self::Rejected(err)
        } else {
            Self::Unavailable(err)
        }
    }
}

/// A client of the memory collection.
#[derive(Clone)]
pub struct MemoryStore {
    client: Arc<Qdrant>,
    collection: String,
    ready: Arc<OnceCell<()>>,
    /// Set once the collection was seen, so reads stop asking.
    exists: Arc<AtomicBool>,
    deletions: Arc<Deletions>,
}

/// Turns not stored because a deletion covers them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Their point ids.
    pub point_ids: Vec<Uuid>,
}

impl MemoryStore {
    /// A client (connects lazily: an unreachable Qdrant is reported on first use).
    pub fn new(settings: &StoreSettings, timeout: Duration) -> anyhow::Result<Self> {
        let mut builder = Qdrant::from_url(&settings.url).timeout(timeout).connect_timeout(timeout);
        if let Some(key) = &settings.api_key {
            builder = builder.api_key(key.expose_secret().to_string());
        }
        let client = Arc::new(builder.build().context("building the Qdrant client")?);
        Ok(Self {
            deletions: Arc::new(Deletions::new(client.clone(), &settings.collection)),
            client,
            collection: settings.collection.clone(),
            ready: Arc::default(),
            exists: Arc::default(),
        })
    }

    /// The collection's name.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    /// Creates the collection and its payload indexes if missing (once per process).
    pub async fn ensure_collection(&self, dimension: u64) -> Result<(), StoreError> {
        self.ready
            .get_or_try_init(|| async {
                let exists =
                    self.client.collection_exists(&self.collection).await.context("collection_exists")?;
                if exists {
                    self.check_dimension(dimension).await?;
                } else {
                    let created = self
                        .client
                        .create_collection(
                            CreateCollectionBuilder::new(&self.collection)
                                .vectors_config(VectorParamsBuilder::new(dimension, Distance::Cosine)),
                        )
                        .await;
                    // Two workers may race to create it: the loser's error is fine if
                    // the collection now exists.
                    if let Err(err) = created {
                        if !self.client.collection_exists(&self.collection).await.unwrap_or(false) {
                            return Err(anyhow::Error::from(err).context("create_collection"));
                        }
                    }
                    tracing::info!(collection = %self.collection, dimension, "memory collection created");
                }
                for (field, kind) in [
                    ("conversation_id", FieldType::Keyword),
                    ("user_id", FieldType::Keyword),
                    ("ts", FieldType::Integer),
                ] {
                    self.client
                        .create_field_index(
                            CreateFieldIndexCollectionBuilder::new(&self.collection, field, kind).wait(true),
                        )
                        .await
                        .with_context(|| format!("creating the payload index on {field}"))?;
                }
                Ok(())
            })
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }

    /// Fails when an existing collection holds vectors of another size (the embedder
    /// changed): every upsert would be refused.
    async fn check_dimension(&self, dimension: u64) -> anyhow::Result<()> {
        use qdrant_client::qdrant::vectors_config::Config;
        let info = self.client.collection_info(&self.collection).await.context("collection_info")?;
        let size = info
            .result
            .and_then(|r| r.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config)
            .and_then(|c| match c {
                Config::Params(p) => Some(p.size),
                Config::ParamsMap(_) => None,
            });
        match size {
            Some(size) if size != dimension => {
                Err(anyhow::Error::new(qdrant_client::QdrantError::ResponseError {
                    status: tonic::Status::failed_precondition(format!(
                        "collection {} holds {size}-dimensional vectors but the embedder makes {dimension}; \
                     use another MEMORY_COLLECTION or the embedder it was built with",
                        self.collection
                    )),
                }))
            }
            _ => Ok(()),
        }
    }

    /// Stores memories with their vectors (overwriting points with the same id), except
    /// those a deletion covers, which are returned.
    ///
    /// Tombstones are read before the upsert (covered turns are not written, and deleted
    /// in case an earlier attempt wrote them) and again after it: a deletion recorded in
    /// between may have run its delete-by-filter before this upsert landed, so what it
    /// covers is deleted here. Either that second read sees the tombstone, or the
    /// tombstone was written after this upsert finished and its delete-by-filter, which
    /// follows the tombstone, removes the points; no order leaves them stored.
    pub async fn upsert(&self, memories: &[(Memory, Vec<f32>)]) -> Result<Dropped, StoreError> {
        if memories.is_empty() {
            return Ok(Dropped::default());
        }
        let dimension = memories[0].1.len() as u64;
        self.ensure_collection(dimension).await?;
        let before = self.deletions.covering(memories.iter().map(|(m, _)| m)).await?;
        let (covered, kept): (Vec<_>, Vec<_>) = memories.iter().partition(|(m, _)| before.covers(m));
        let mut dropped: Vec<Uuid> = covered.iter().map(|(m, _)| m.point_id).collect();
        self.delete_points(&dropped).await?;
        if kept.is_empty() {
            return Ok(Dropped { point_ids: dropped });
        }
        let points = kept
            .iter()
            .map(|(m, vector)| {
                let payload = Payload::try_from(serde_json::json!({
                    "conversation_id": m.conversation_id.to_string(),
                    "user_id": m.user_id,
                    "role": m.role.as_str(),
                    "text": m.text,
                    "ts": m.ts_ms,
                    "message_ts": m.message_ts_ms,
                    "message_id": m.message_id.to_string(),
                }))
                .context("payload")?;
                Ok(PointStruct::new(m.point_id.to_string(), vector.clone(), payload))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let upsert = self.client.upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true));
        self.traced("upsert", upsert).await.context("upsert_points")?;
        let after = self.deletions.covering(kept.iter().map(|(m, _)| m)).await?;
        if !after.is_empty() {
            let late: Vec<Uuid> =
                kept.iter().filter(|(m, _)| after.covers(m)).map(|(m, _)| m.point_id).collect();
            self.delete_points(&late).await?;
            dropped.extend(late);
        }
        Ok(Dropped { point_ids: dropped })
    }

    /// Deletes points by id (waiting until applied).
    async fn delete_points(&self, ids: &[Uuid]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(id.to_string())).collect();
        let delete = self.client.delete_points(
            DeletePointsBuilder::new(&self.collection).points(PointsIdsList { ids }).wait(true),
        );
        self.traced("delete", delete).await.context("delete_points")?;
        Ok(())
    }

    /// Deletes a user's conversation, or everything of the user (`None`), for good: the
    /// tombstone first (so turns still in flight are dropped when they arrive), then
    /// every stored turn it covers. Idempotent.
    pub async fn forget(&self, user_id: &str, conversation_id: Option<Uuid>) -> Result<Deletion, StoreError> {
        let deletion = self.deletions.record(user_id, conversation_id, Utc::now().timestamp_millis()).await?;
        if !self.exists().await? {
            // Nothing stored yet; a worker creating the collection now sees the tombstone.
            return Ok(deletion);
        }
        let mut conditions = vec![Condition::matches("user_id", user_id.to_string())];
        if let Some(conversation_id) = conversation_id {
            conditions.push(Condition::matches("conversation_id", conversation_id.to_string()));
        }
        let delete = self.client.delete_points(
            DeletePointsBuilder::new(&self.collection).points(Filter::must(conditions)).wait(true),
        );
        self.traced("delete", delete).await.context("delete by filter")?;
        Ok(deletion)
    }

    /// Every turn of a user's conversation, in order (time, the question before its
    /// reply). Reads the whole conversation: fine for conversations of thousands of
    /// turns (see docs/ARCHITECTURE.md, "History and deletion").
    pub async fn conversation(
        &self,
        user_id: &str,
        conversation_id: Uuid,
    ) -> Result<Vec<Memory>, StoreError> {
        let filter = Filter::must([
            Condition::matches("user_id", user_id.to_string()),
            Condition::matches("conversation_id", conversation_id.to_string()),
        ]);
        let mut turns = self.scroll_all(filter, None).await?;
        turns.sort_by(|a, b| {
            (a.ts_ms, a.role != Role::User, a.point_id).cmp(&(b.ts_ms, b.role != Role::User, b.point_id))
        });
        Ok(turns)
    }

    /// Every turn of a user without its text (for listing conversations).
    pub async fn user_turns(&self, user_id: &str) -> Result<Vec<Memory>, StoreError> {
        let filter = Filter::must([Condition::matches("user_id", user_id.to_string())]);
        let fields = ["conversation_id", "user_id", "role", "ts", "message_ts", "message_id"];
        self.scroll_all(filter, Some(fields.iter().map(|f| f.to_string()).collect())).await
    }

    /// Some of a user's turns by point id, with their text (missing ones are left out).
    pub async fn turns_by_id(&self, user_id: &str, ids: &[Uuid]) -> Result<Vec<Memory>, StoreError> {
        if ids.is_empty() || !self.exists().await? {
            return Ok(Vec::new());
        }
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::from(id.to_string())).collect();
        let get = self.client.get_points(
            qdrant_client::qdrant::GetPointsBuilder::new(&self.collection, ids).with_payload(true),
        );
        let response = self.traced("get", get).await.context("get_points")?;
        let turns: Vec<Memory> =
            response.result.iter().filter_map(from_retrieved).filter(|m| m.user_id == user_id).collect();
        self.without_deleted(turns).await
    }

    /// A user's latest `limit` turns, newest first.
    pub async fn latest(&self, user_id: &str, limit: u32) -> Result<Vec<Memory>, StoreError> {
        if limit == 0 || !self.exists().await? {
            return Ok(Vec::new());
        }
        let scroll = self.client.scroll(
            ScrollPointsBuilder::new(&self.collection)
                .filter(Filter::must([Condition::matches("user_id", user_id.to_string())]))
                .order_by(OrderByBuilder::new("ts").direction(Direction::Desc as i32))
                .limit(limit)
                .with_payload(true),
        );
        let response = self.traced("scroll", scroll).await.context("scroll")?;
        let mut turns: Vec<Memory> = response.result.iter().filter_map(from_retrieved).collect();
        turns.sort_by_key(|m| std::cmp::Reverse(m.ts_ms));
        self.without_deleted(turns).await
    }

    /// Every point matching `filter` (page by page), without deleted ones.
    async fn scroll_all(
        &self,
        filter: Filter,
        fields: Option<Vec<String>>,
    ) -> Result<Vec<Memory>, StoreError> {
        if !self.exists().await? {
            return Ok(Vec::new());
        }
        let mut turns = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut request =
                ScrollPointsBuilder::new(&self.collection).filter(filter.clone()).limit(SCROLL_PAGE);
            request = match &fields {
                Some(fields) => request.with_payload(PayloadIncludeSelector { fields: fields.clone() }),
                None => request.with_payload(true),
            };
            if let Some(offset) = offset.take() {
                request = request.offset(offset);
            }
            let response = self.traced("scroll", self.client.scroll(request)).await.context("scroll")?;
            turns.extend(response.result.iter().filter_map(from_retrieved));
            match response.next_page_offset {
                Some(next) => offset = Some(next),
                None => break,
            }
        }
        self.without_deleted(turns).await
    }

    /// Leaves out turns a deletion covers (a worker's upsert racing a deletion is
    /// visible until the worker deletes it again; reads never show it).
    async fn without_deleted(&self, turns: Vec<Memory>) -> Result<Vec<Memory>, StoreError> {
        if turns.is_empty() {
            return Ok(turns);
        }
        let tombstones = self.deletions.covering(&turns).await?;
        if tombstones.is_empty() {
            return Ok(turns);
        }
        Ok(turns.into_iter().filter(|m| !tombstones.covers(m)).collect())
    }

    /// The latest `limit` turns of a conversation (only the user's own), oldest first.
    pub async fn recent_turns(
        &self,
        user_id: &str,
        conversation_id: Uuid,
        limit: u32,
    ) -> Result<Vec<Memory>, StoreError> {
        if limit == 0 || !self.exists().await? {
            return Ok(Vec::new());
        }
        let filter = Filter::must([
            Condition::matches("user_id", user_id.to_string()),
            Condition::matches("conversation_id", conversation_id.to_string()),
        ]);
        let scroll = self.client.scroll(
            ScrollPointsBuilder::new(&self.collection)
                .filter(filter)
                .order_by(OrderByBuilder::new("ts").direction(Direction::Desc as i32))
                .limit(limit)
                .with_payload(true),
        );
        let response = self.traced("scroll", scroll).await.context("scroll")?;
        let mut turns: Vec<Memory> = response.result.iter().filter_map(from_retrieved).collect();
        turns.sort_by_key(|m| m.ts_ms);
        self.without_deleted(turns).await
    }

    /// The user's `k` memories most similar to `vector`, from any of their conversations.
    pub async fn similar(
        &self,
        user_id: &str,
        vector: Vec<f32>,
        k: u64,
    ) -> Result<Vec<(Memory, f32)>, StoreError> {
        if k == 0 || !self.exists().await? {
            return Ok(Vec::new());
        }
        let query = self.client.query(
            QueryPointsBuilder::new(&self.collection)
                .query(vector)
                .filter(Filter::must([Condition::matches("user_id", user_id.to_string())]))
                .limit(k)
                .with_payload(true),
        );
        let response = self.traced("query", query).await.context("query")?;
        let found: Vec<(Memory, f32)> =
            response.result.iter().filter_map(|p| from_scored(p).map(|m| (m, p.score))).collect();
        let tombstones = self.deletions.covering(found.iter().map(|(m, _)| m)).await?;
        Ok(found.into_iter().filter(|(m, _)| !tombstones.covers(m)).collect())
    }

    /// Runs one Qdrant call inside its client span (database conventions) when traces
    /// are exported.
    async fn traced<T, E: std::fmt::Display>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        if !otel::exporting() {
            return call.await;
        }
        let span = otel::span(&format!("{operation} {}", self.collection), otel::Kind::Client);
        otel::set(&span, "db.system.name", "qdrant");
        otel::set(&span, "db.operation.name", operation);
        otel::set(&span, "db.collection.name", self.collection.clone());
        let result = call.instrument(span.clone()).await;
        if let Err(err) = &result {
            otel::fail(&span, err);
        }
        result
    }

    async fn exists(&self) -> Result<bool, StoreError> {
        if self.ready.initialized() || self.exists.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let exists = self.client.collection_exists(&self.collection).await.context("collection_exists")?;
        self.exists.store(exists, Ordering::Relaxed);
        Ok(exists)
    }
}

fn from_retrieved(p: &RetrievedPoint) -> Option<Memory> {
    memory(p.id.as_ref(), &p.payload)
}

fn from_scored(p: &ScoredPoint) -> Option<Memory> {
    memory(p.id.as_ref(), &p.payload)
}

/// A point's UUID id (numeric ids are not ours).
pub(crate) fn point_uuid(id: Option<&PointId>) -> Option<Uuid> {
    use qdrant_client::qdrant::point_id::PointIdOptions;
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Uuid(s) => s.parse().ok(),
        PointIdOptions::Num(_) => None,
    }
}

/// A string field of a payload.
pub(crate) fn payload_text(payload: &std::collections::HashMap<String, Value>, key: &str) -> Option<String> {
    use qdrant_client::qdrant::value::Kind;
    match payload.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An integer field of a payload.
pub(crate) fn payload_int(payload: &std::collections::HashMap<String, Value>, key: &str) -> Option<i64> {
    use qdrant_client::qdrant::value::Kind;
    match payload.get(key)?.kind.as_ref()? {
        Kind::IntegerValue(i) => Some(*i),
        _ => None,
    }
}

fn memory(id: Option<&PointId>, payload: &std::collections::HashMap<String, Value>) -> Option<Memory> {
    let text = |k: &str| payload_text(payload, k);
    let role = match text("role")?.as_str() {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        _ => return None,
    };
    let ts_ms = payload_int(payload, "ts")?;
    Some(Memory {
        point_id: point_uuid(id)?,
        conversation_id: text("conversation_id")?.parse().ok()?,
        user_id: text("user_id")?,
        role,
        // Left out when a read asked for the other fields only.
        text: text("text").unwrap_or_default(),
        ts_ms,
        // Turns stored before deletions existed carry only `ts`.
        message_ts_ms: payload_int(payload, "message_ts").unwrap_or(ts_ms),
        message_id: text("message_id")?.parse().ok()?,
    })
}
