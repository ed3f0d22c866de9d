//! Point operations on the engine, shared by the gRPC and REST APIs: both translate
//! their wire form into these calls, so the two APIs see the same data and behave alike.
//!
//! Every write is applied and flushed before it is acknowledged, so `wait=false` is
//! treated like `wait=true`: the next read always sees it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    CountRequest, Filter, NamedQuery, PointId, QueryEnum, QueryRequest, Record, ScoredPoint, ScoringQuery,
    ScrollRequest, UpdateOperation, VectorInternal, WithPayloadInterface, WithVector,
};
use tonic::Status;

use crate::convert::engine_error;
use crate::store::Store;

/// Page size when a scroll, search or query does not give one (Qdrant's default).
pub const DEFAULT_LIMIT: usize = 10;

/// The point operations over a [`Store`].
pub struct PointOps {
    store: Arc<Store>,
    /// Qdrant numbers every write; clients may log the number but do not interpret it.
    /// One counter for both APIs, as one Qdrant has.
    next_operation_id: AtomicU64,
}

impl PointOps {
    /// Operations over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store, next_operation_id: AtomicU64::new(0) }
    }

    /// Applies one update to a collection (flushed before this returns) and gives its
    /// operation id.
    pub async fn update(&self, collection: &str, operation: UpdateOperation) -> Result<u64, Status> {
        let context = format!("update of collection `{collection}` failed");
        self.store
            .write(collection, move |shard| shard.update(operation).map_err(|err| engine_error(context, err)))
            .await?;
        Ok(self.next_operation_id.fetch_add(1, Ordering::Relaxed))
    }

    /// The points with these ids that exist, in the engine's order.
    pub async fn retrieve(
        &self,
        collection: &str,
        ids: Vec<PointId>,
        with_payload: WithPayloadInterface,
        with_vector: WithVector,
    ) -> Result<Vec<Record>, Status> {
        let context = format!("get from collection `{collection}` failed");
        self.store
            .read(collection, move |shard| {
                shard
                    .retrieve(&ids, Some(with_payload), Some(with_vector))
                    .map_err(|err| engine_error(context, err))
            })
            .await
    }

    /// One page of points and the id the next page starts at, if any.
    pub async fn scroll(
        &self,
        collection: &str,
        request: ScrollRequest,
    ) -> Result<(Vec<Record>, Option<PointId>), Status> {
        let context = format!("scroll of collection `{collection}` failed");
        self.store
            .read(collection, move |shard| shard.scroll(request).map_err(|err| engine_error(context, err)))
            .await
    }

    /// How many points match.
    pub async fn count(&self, collection: &str, request: CountRequest) -> Result<usize, Status> {
        let context = format!("count of collection `{collection}` failed");
        self.store
            .read(collection, move |shard| shard.count(request).map_err(|err| engine_error(context, err)))
            .await
    }

    /// Runs a search or query against a collection.
    pub async fn query(&self, collection: &str, parts: QueryParts) -> Result<Vec<ScoredPoint>, Status> {
        let (offset, limit) = (parts.offset, parts.limit);
        let context = format!("query on collection `{collection}` failed");
        let points = self
            .store
            .read(collection, move |shard| {
                shard.query(parts.into()).map_err(|err| engine_error(context, err))
            })
            .await?;
        // The shard returns the best `offset + limit` points and leaves cutting off the
        // offset to Qdrant's collection layer, which is us.
        Ok(points.into_iter().skip(offset).take(limit).collect())
    }
}

/// The parts of a search or query the engine's query request needs.
pub struct QueryParts {
    /// What to score by; `None` lists points in id order.
    pub query: Option<ScoringQuery>,
    /// Which points may match.
    pub filter: Option<Filter>,
    /// Drop points scoring worse than this.
    pub score_threshold: Option<f32>,
    /// Page size.
    pub limit: usize,
    /// Points to skip.
    pub offset: usize,
    /// Which payload to return.
    pub with_payload: WithPayloadInterface,
    /// Which vectors to return.
    pub with_vector: WithVector,
}

impl From<QueryParts> for QueryRequest {
    fn from(parts: QueryParts) -> Self {
        QueryRequest {
            prefetches: Vec::new(),
            query: parts.query,
            filter: parts.filter,
            score_threshold: parts.score_threshold.map(OrderedFloat),
            limit: parts.limit,
            offset: parts.offset,
            params: None,
            with_vector: parts.with_vector,
            with_payload: parts.with_payload,
        }
    }
}

/// A nearest-neighbour query on a dense vector (`using` names the vector, if not the
/// unnamed one).
pub fn nearest(vector: Vec<f32>, using: Option<String>) -> ScoringQuery {
    ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery { query: VectorInternal::Dense(vector), using }))
}

/// A page size from a request; Qdrant refuses 0.
pub fn limit_from(limit: Option<u64>) -> Result<usize, Status> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(Status::invalid_argument("limit must be at least 1")),
        Some(limit) => usize::try_from(limit)
            .map_err(|_| Status::invalid_argument(format!("limit {limit} is too large"))),
    }
}

/// An offset from a request; none means 0.
pub fn offset_from(offset: Option<u64>) -> Result<usize, Status> {
    usize::try_from(offset.unwrap_or(0)).map_err(|_| Status::invalid_argument("offset is too large"))
}
