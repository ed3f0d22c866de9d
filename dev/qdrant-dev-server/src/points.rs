//! `qdrant.Points`: write, read, search, query, count and scroll points, translated
//! into the shared [`PointOps`] calls.

use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as pb;
use qdrant_client::qdrant::points_server::Points;
use qdrant_edge::{
    CountRequest, CreateIndex, FieldIndexOperations, OrderByInterface, PayloadFieldSchema,
    PointInsertOperations, PointOperations, PointStructPersisted, ScoringQuery, ScrollRequest,
    UpdateOperation,
};
use tonic::{Request, Response, Status};

use crate::convert::{
    field_type_from_pb, json_path, order_by_from_pb, payload_from_pb, point_id_from_pb, point_id_to_pb,
    point_ids_from_pb, record_to_pb, scored_point_to_pb, unsupported, vectors_from_pb, with_payload_from_pb,
    with_vectors_from_pb,
};
use crate::filter::filter_from_pb;
use crate::point_ops::{limit_from, nearest, offset_from, PointOps, QueryParts};

/// Serves the point methods over the shared [`PointOps`].
pub struct PointsService {
    ops: Arc<PointOps>,
}

impl PointsService {
    /// A service over `ops`.
    pub fn new(ops: Arc<PointOps>) -> Self {
        Self { ops }
    }

    /// Applies one update to a collection and reports it completed.
    async fn update(
        &self,
        collection: &str,
        operation: UpdateOperation,
        started: Instant,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        let operation_id = self.ops.update(collection, operation).await?;
        Ok(Response::new(pb::PointsOperationResponse {
            result: Some(pb::UpdateResult {
                operation_id: Some(operation_id),
                status: pb::UpdateStatus::Completed as i32,
            }),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    /// Runs a search or query against a collection.
    async fn run_query(&self, collection: &str, parts: QueryParts) -> Result<Vec<pb::ScoredPoint>, Status> {
        let points = self.ops.query(collection, parts).await?;
        Ok(points.into_iter().map(scored_point_to_pb).collect())
    }
}

/// There is one local shard, so a request naming shard keys cannot mean anything here.
fn refuse_shard_keys(selector: &Option<pb::ShardKeySelector>) -> Result<(), Status> {
    match selector {
        Some(_) => Err(unsupported("shard keys (there is a single local shard)")),
        None => Ok(()),
    }
}

/// The engine query for a `Query` request's `query` field; `None` means no scoring,
/// which the engine answers in point-id order (a scroll).
fn scoring_query(query: Option<pb::Query>, using: Option<String>) -> Result<Option<ScoringQuery>, Status> {
    use pb::query::Variant;
    use pb::vector_input::Variant as Input;
    let Some(variant) = query.and_then(|q| q.variant) else {
        return Ok(None);
    };
    let unsupported_query = |kind: &str| Err(unsupported(format!("{kind} queries")));
    match variant {
        Variant::Nearest(input) => match input.variant {
            Some(Input::Dense(dense)) => Ok(Some(nearest(dense.data, using))),
            Some(Input::Id(_)) => unsupported_query("nearest-to-a-point-id"),
            Some(Input::Sparse(_)) => unsupported_query("sparse vector"),
            Some(Input::MultiDense(_)) => unsupported_query("multi-vector"),
            Some(Input::Document(_) | Input::Image(_) | Input::Object(_)) => {
                unsupported_query("server-side inference")
            }
            None => Err(Status::invalid_argument("nearest query has no vector")),
        },
        Variant::OrderBy(order_by) => Ok(Some(ScoringQuery::OrderBy(order_by_from_pb(order_by)?))),
        Variant::Recommend(_) => unsupported_query("recommend"),
        Variant::Discover(_) => unsupported_query("discover"),
        Variant::Context(_) => unsupported_query("context"),
        Variant::Fusion(_) | Variant::Rrf(_) => unsupported_query("fusion"),
        Variant::Sample(_) => unsupported_query("sample"),
        Variant::Formula(_) => unsupported_query("formula"),
        Variant::NearestWithMmr(_) => unsupported_query("MMR"),
        Variant::RelevanceFeedback(_) => unsupported_query("relevance feedback"),
        Variant::Text(_) => unsupported_query("text"),
    }
}

fn not_served<T>(method: &str) -> Result<Response<T>, Status> {
    Err(unsupported(format!("Points/{method}")))
}

#[tonic::async_trait]
impl Points for PointsService {
    async fn upsert(
        &self,
        request: Request<pb::UpsertPoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        if request.update_filter.is_some() {
            return Err(unsupported("conditional upserts (update_filter)"));
        }
        if request.update_mode.is_some_and(|mode| mode != pb::UpdateMode::Upsert as i32) {
            return Err(unsupported("update modes other than Upsert"));
        }
        let points = request
            .points
            .into_iter()
            .map(|point| {
                Ok(PointStructPersisted {
                    id: point_id_from_pb(point.id)?,
                    vector: vectors_from_pb(point.vectors)?,
                    payload: Some(payload_from_pb(point.payload)),
                })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
            PointInsertOperations::PointsList(points),
        ));
        self.update(&request.collection_name, operation, started).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeletePoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        use pb::points_selector::PointsSelectorOneOf;
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        let operation = match request.points.and_then(|s| s.points_selector_one_of) {
            Some(PointsSelectorOneOf::Points(list)) => {
                PointOperations::DeletePoints { ids: point_ids_from_pb(list.ids)? }
            }
            Some(PointsSelectorOneOf::Filter(filter)) => {
                let filter = filter_from_pb(Some(filter))?
                    .ok_or_else(|| Status::invalid_argument("delete filter is missing"))?;
                PointOperations::DeletePointsByFilter(filter)
            }
            None => return Err(Status::invalid_argument("delete needs point ids or a filter")),
        };
        self.update(&request.collection_name, UpdateOperation::PointOperation(operation), started).await
    }

    async fn get(&self, request: Request<pb::GetPoints>) -> Result<Response<pb::GetResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        let ids = point_ids_from_pb(request.ids)?;
        let with_payload = with_payload_from_pb(request.with_payload, true)?;
        let with_vector = with_vectors_from_pb(request.with_vectors);
        let records = self.ops.retrieve(&request.collection_name, ids, with_payload, with_vector).await?;
        Ok(Response::new(pb::GetResponse {
            result: records.into_iter().map(record_to_pb).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn update_vectors(
        &self,
        _request: Request<pb::UpdatePointVectors>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("UpdateVectors")
    }

    async fn delete_vectors(
        &self,
        _request: Request<pb::DeletePointVectors>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("DeleteVectors")
    }

    async fn set_payload(
        &self,
        _request: Request<pb::SetPayloadPoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("SetPayload")
    }

    async fn overwrite_payload(
        &self,
        _request: Request<pb::SetPayloadPoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("OverwritePayload")
    }

    async fn delete_payload(
        &self,
        _request: Request<pb::DeletePayloadPoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("DeletePayload")
    }

    async fn clear_payload(
        &self,
        _request: Request<pb::ClearPayloadPoints>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("ClearPayload")
    }

    async fn create_field_index(
        &self,
        request: Request<pb::CreateFieldIndexCollection>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        // Index params (tokenizer, is_tenant, on_disk, ...) are tuning; the engine's
        // defaults for the field type are used.
        let schema = field_type_from_pb(request.field_type, request.field_index_params.as_ref())?;
        let operation =
            UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                field_name: json_path(&request.field_name)?,
                field_schema: Some(PayloadFieldSchema::FieldType(schema)),
            }));
        self.update(&request.collection_name, operation, started).await
    }

    async fn delete_field_index(
        &self,
        request: Request<pb::DeleteFieldIndexCollection>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let operation = UpdateOperation::FieldIndexOperation(FieldIndexOperations::DeleteIndex(json_path(
            &request.field_name,
        )?));
        self.update(&request.collection_name, operation, started).await
    }

    async fn create_vector_name(
        &self,
        _request: Request<pb::CreateVectorNameRequest>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("CreateVectorName")
    }

    async fn delete_vector_name(
        &self,
        _request: Request<pb::DeleteVectorNameRequest>,
    ) -> Result<Response<pb::PointsOperationResponse>, Status> {
        not_served("DeleteVectorName")
    }

    async fn search(
        &self,
        request: Request<pb::SearchPoints>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        if request.sparse_indices.is_some() {
            return Err(unsupported("sparse vector search"));
        }
        let parts = QueryParts {
            query: Some(nearest(request.vector, request.vector_name)),
            filter: filter_from_pb(request.filter)?,
            score_threshold: request.score_threshold,
            limit: limit_from(Some(request.limit))?,
            offset: offset_from(request.offset)?,
            with_payload: with_payload_from_pb(request.with_payload, false)?,
            with_vector: with_vectors_from_pb(request.with_vectors),
        };
        let result = self.run_query(&request.collection_name, parts).await?;
        Ok(Response::new(pb::SearchResponse { result, time: started.elapsed().as_secs_f64(), usage: None }))
    }

    async fn search_batch(
        &self,
        _request: Request<pb::SearchBatchPoints>,
    ) -> Result<Response<pb::SearchBatchResponse>, Status> {
        not_served("SearchBatch")
    }

    async fn search_groups(
        &self,
        _request: Request<pb::SearchPointGroups>,
    ) -> Result<Response<pb::SearchGroupsResponse>, Status> {
        not_served("SearchGroups")
    }

    async fn scroll(
        &self,
        request: Request<pb::ScrollPoints>,
    ) -> Result<Response<pb::ScrollResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        let scroll = ScrollRequest {
            offset: request.offset.map(|id| point_id_from_pb(Some(id))).transpose()?,
            limit: Some(limit_from(request.limit.map(u64::from))?),
            filter: filter_from_pb(request.filter)?,
            with_payload: Some(with_payload_from_pb(request.with_payload, true)?),
            with_vector: with_vectors_from_pb(request.with_vectors),
            order_by: request.order_by.map(order_by_from_pb).transpose()?.map(OrderByInterface::Struct),
        };
        let (records, next) = self.ops.scroll(&request.collection_name, scroll).await?;
        Ok(Response::new(pb::ScrollResponse {
            next_page_offset: next.map(point_id_to_pb),
            result: records.into_iter().map(record_to_pb).collect(),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn recommend(
        &self,
        _request: Request<pb::RecommendPoints>,
    ) -> Result<Response<pb::RecommendResponse>, Status> {
        not_served("Recommend")
    }

    async fn recommend_batch(
        &self,
        _request: Request<pb::RecommendBatchPoints>,
    ) -> Result<Response<pb::RecommendBatchResponse>, Status> {
        not_served("RecommendBatch")
    }

    async fn recommend_groups(
        &self,
        _request: Request<pb::RecommendPointGroups>,
    ) -> Result<Response<pb::RecommendGroupsResponse>, Status> {
        not_served("RecommendGroups")
    }

    async fn discover(
        &self,
        _request: Request<pb::DiscoverPoints>,
    ) -> Result<Response<pb::DiscoverResponse>, Status> {
        not_served("Discover")
    }

    async fn discover_batch(
        &self,
        _request: Request<pb::DiscoverBatchPoints>,
    ) -> Result<Response<pb::DiscoverBatchResponse>, Status> {
        not_served("DiscoverBatch")
    }

    async fn count(&self, request: Request<pb::CountPoints>) -> Result<Response<pb::CountResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        let count = CountRequest {
            filter: filter_from_pb(request.filter)?,
            // Qdrant's default; an estimate only saves time on large collections.
            exact: request.exact.unwrap_or(true),
        };
        let count = self.ops.count(&request.collection_name, count).await?;
        Ok(Response::new(pb::CountResponse {
            result: Some(pb::CountResult { count: count as u64 }),
            time: started.elapsed().as_secs_f64(),
            usage: None,
        }))
    }

    async fn update_batch(
        &self,
        _request: Request<pb::UpdateBatchPoints>,
    ) -> Result<Response<pb::UpdateBatchResponse>, Status> {
        not_served("UpdateBatch")
    }

    async fn query(&self, request: Request<pb::QueryPoints>) -> Result<Response<pb::QueryResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        refuse_shard_keys(&request.shard_key_selector)?;
        if !request.prefetch.is_empty() {
            return Err(unsupported("prefetch in queries"));
        }
        if request.lookup_from.is_some() {
            return Err(unsupported("lookup_from in queries"));
        }
        let parts = QueryParts {
            query: scoring_query(request.query, request.using)?,
            filter: filter_from_pb(request.filter)?,
            score_threshold: request.score_threshold,
            limit: limit_from(request.limit)?,
            offset: offset_from(request.offset)?,
            with_payload: with_payload_from_pb(request.with_payload, false)?,
            with_vector: with_vectors_from_pb(request.with_vectors),
        };
        let result = self.run_query(&request.collection_name, parts).await?;
        Ok(Response::new(pb::QueryResponse { result, time: started.elapsed().as_secs_f64(), usage: None }))
    }

    async fn query_batch(
        &self,
        _request: Request<pb::QueryBatchPoints>,
    ) -> Result<Response<pb::QueryBatchResponse>, Status> {
        not_served("QueryBatch")
    }

    async fn query_groups(
        &self,
        _request: Request<pb::QueryPointGroups>,
    ) -> Result<Response<pb::QueryGroupsResponse>, Status> {
        not_served("QueryGroups")
    }

    async fn facet(&self, _request: Request<pb::FacetCounts>) -> Result<Response<pb::FacetResponse>, Status> {
        not_served("Facet")
    }

    async fn search_matrix_pairs(
        &self,
        _request: Request<pb::SearchMatrixPoints>,
    ) -> Result<Response<pb::SearchMatrixPairsResponse>, Status> {
        not_served("SearchMatrixPairs")
    }

    async fn search_matrix_offsets(
        &self,
        _request: Request<pb::SearchMatrixPoints>,
    ) -> Result<Response<pb::SearchMatrixOffsetsResponse>, Status> {
        not_served("SearchMatrixOffsets")
    }
}
