//! REST point routes: upsert, get, delete, scroll, count, search, query and payload
//! indexes, each parsed into the shared [`PointOps`](crate::point_ops::PointOps) calls.
//!
//! `?wait=…`, `?timeout=…` and `?consistency=…` are accepted and ignored: every write is
//! flushed before it is answered, and there is one local shard.

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use qdrant_edge::{
    CountRequest, CreateIndex, FieldIndexOperations, Filter, OrderBy, OrderByInterface, Payload,
    PayloadFieldSchema, PointId, PointInsertOperations, PointOperations, PointStructPersisted, ScoringQuery,
    ScrollRequest, UpdateOperation, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tonic::Status;

use super::json::{batch_vectors, dense_vector, point_vectors, RecordOut, ScoredOut};
use super::{answer, ApiError, Body, RestState};
use crate::convert::{json_path, unsupported};
use crate::point_ops::{limit_from, nearest, offset_from, QueryParts};

/// Qdrant's `UpdateResult`: writes here are always completed when answered.
#[derive(Serialize)]
struct UpdateResult {
    operation_id: u64,
    status: &'static str,
}

async fn apply(
    state: &RestState,
    collection: &str,
    operation: UpdateOperation,
    started: Instant,
) -> Result<Response, ApiError> {
    let operation_id = state.ops.update(collection, operation).await?;
    Ok(answer(UpdateResult { operation_id, status: "completed" }, started))
}

/// There is one local shard, so a request naming shard keys cannot mean anything here.
fn refuse_shard_key(shard_key: &Option<Value>) -> Result<(), ApiError> {
    match shard_key {
        Some(key) if !key.is_null() => Err(unsupported("shard keys (there is a single local shard)").into()),
        _ => Ok(()),
    }
}

/// Fields Qdrant accepts that this server leaves out; refused rather than ignored so
/// an answer is never silently different from Qdrant's.
fn refuse_present(fields: &[(&str, &Option<Value>)]) -> Result<(), ApiError> {
    for (name, value) in fields {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(format!("`{name}`")).into());
        }
    }
    Ok(())
}

fn payload_or_default(selector: Option<WithPayloadInterface>, default: bool) -> WithPayloadInterface {
    selector.unwrap_or(WithPayloadInterface::Bool(default))
}

fn vectors_or_none(selector: Option<WithVector>) -> WithVector {
    selector.unwrap_or(WithVector::Bool(false))
}

/// One point of an upsert's `points` list.
#[derive(Deserialize)]
struct PointIn {
    id: PointId,
    vector: Value,
    #[serde(default)]
    payload: Option<Payload>,
}

/// An upsert's `batch` form: parallel lists of ids, vectors and payloads.
#[derive(Deserialize)]
struct BatchIn {
    ids: Vec<PointId>,
    vectors: Value,
    #[serde(default)]
    payloads: Option<Vec<Option<Payload>>>,
}

/// `PUT /collections/{name}/points`'s body: `points` or `batch`.
#[derive(Deserialize)]
pub struct UpsertBody {
    points: Option<Vec<PointIn>>,
    batch: Option<BatchIn>,
    shard_key: Option<Value>,
    update_filter: Option<Value>,
}

fn point(
    id: PointId,
    vector: qdrant_edge::VectorStructPersisted,
    payload: Option<Payload>,
) -> PointStructPersisted {
    // No payload is an empty one, as in Qdrant.
    PointStructPersisted { id, vector, payload: Some(payload.unwrap_or_else(|| Payload(Map::new()))) }
}

/// `PUT /collections/{name}/points`: upsert.
pub async fn upsert(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<UpsertBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    refuse_present(&[("update_filter", &body.update_filter)])?;
    let points = match (body.points, body.batch) {
        (Some(points), None) => points
            .into_iter()
            .map(|p| Ok(point(p.id, point_vectors(&p.vector)?, p.payload)))
            .collect::<Result<Vec<_>, Status>>()?,
        (None, Some(batch)) => {
            let vectors = batch_vectors(&batch.vectors, batch.ids.len())?;
            let mut payloads = batch.payloads.unwrap_or_default().into_iter();
            batch
                .ids
                .into_iter()
                .zip(vectors)
                .map(|(id, vector)| point(id, vector, payloads.next().flatten()))
                .collect()
        }
        _ => return Err(ApiError::bad_request("Json deserialize error: give either `points` or `batch`")),
    };
    let operation = UpdateOperation::PointOperation(PointOperations::UpsertPoints(
        PointInsertOperations::PointsList(points),
    ));
    apply(&state, &name, operation, started).await
}

/// `POST /collections/{name}/points/delete`'s body: ids or a filter.
#[derive(Deserialize)]
pub struct DeleteBody {
    points: Option<Vec<PointId>>,
    filter: Option<Filter>,
    shard_key: Option<Value>,
}

/// `POST /collections/{name}/points/delete`.
pub async fn delete(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<DeleteBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    let operation = match (body.points, body.filter) {
        (Some(ids), None) => PointOperations::DeletePoints { ids },
        (None, Some(filter)) => PointOperations::DeletePointsByFilter(filter),
        _ => return Err(ApiError::bad_request("Json deserialize error: give either `points` or `filter`")),
    };
    apply(&state, &name, UpdateOperation::PointOperation(operation), started).await
}

/// `GET /collections/{name}/points/{id}`: the point with its payload, 404 if missing.
pub async fn get_one(
    State(state): State<RestState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let point_id: PointId = id.parse().map_err(|()| {
        ApiError::bad_request(format!("`{id}` is not a point id (an unsigned integer or a UUID)"))
    })?;
    let records = state
        .ops
        .retrieve(&name, vec![point_id], WithPayloadInterface::Bool(true), WithVector::Bool(true))
        .await?;
    match records.into_iter().next() {
        Some(record) => Ok(answer(RecordOut::from(record), started)),
        // Qdrant's own wording.
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("Not found: Point with id {id} does not exists!"),
        )),
    }
}

/// `POST /collections/{name}/points`'s body.
#[derive(Deserialize)]
pub struct GetBody {
    ids: Vec<PointId>,
    with_payload: Option<WithPayloadInterface>,
    #[serde(alias = "with_vectors")]
    with_vector: Option<WithVector>,
    shard_key: Option<Value>,
}

/// `POST /collections/{name}/points`: the points with these ids that exist.
pub async fn get_many(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<GetBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    let with_payload = payload_or_default(body.with_payload, true);
    let records =
        state.ops.retrieve(&name, body.ids, with_payload, vectors_or_none(body.with_vector)).await?;
    Ok(answer(records.into_iter().map(RecordOut::from).collect::<Vec<_>>(), started))
}

/// `POST /collections/{name}/points/scroll`'s body; all optional.
#[derive(Deserialize)]
pub struct ScrollBody {
    offset: Option<PointId>,
    limit: Option<u64>,
    filter: Option<Filter>,
    with_payload: Option<WithPayloadInterface>,
    #[serde(alias = "with_vectors")]
    with_vector: Option<WithVector>,
    order_by: Option<OrderByInterface>,
    shard_key: Option<Value>,
}

#[derive(Serialize)]
struct ScrollResult {
    points: Vec<RecordOut>,
    next_page_offset: Option<PointId>,
}

/// `POST /collections/{name}/points/scroll`.
pub async fn scroll(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<ScrollBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    let request = ScrollRequest {
        offset: body.offset,
        limit: Some(limit_from(body.limit)?),
        filter: body.filter,
        with_payload: Some(payload_or_default(body.with_payload, true)),
        with_vector: vectors_or_none(body.with_vector),
        order_by: body.order_by,
    };
    let (records, next) = state.ops.scroll(&name, request).await?;
    let points = records.into_iter().map(RecordOut::from).collect();
    Ok(answer(ScrollResult { points, next_page_offset: next }, started))
}

/// `POST /collections/{name}/points/count`'s body; all optional.
#[derive(Deserialize)]
pub struct CountBody {
    filter: Option<Filter>,
    exact: Option<bool>,
    shard_key: Option<Value>,
}

/// `POST /collections/{name}/points/count`.
pub async fn count(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<CountBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    // Exact is Qdrant's default; an estimate only saves time on large collections.
    let request = CountRequest { filter: body.filter, exact: body.exact.unwrap_or(true) };
    #[derive(Serialize)]
    struct CountResult {
        count: usize,
    }
    let count = state.ops.count(&name, request).await?;
    Ok(answer(CountResult { count }, started))
}

/// `POST /collections/{name}/points/search`'s body (the pre-1.10 search API). `params`
/// (HNSW `ef`, `exact`, quantization) is tuning and ignored: search here is exact.
#[derive(Deserialize)]
pub struct SearchBody {
    vector: Value,
    filter: Option<Filter>,
    limit: u64,
    offset: Option<u64>,
    with_payload: Option<WithPayloadInterface>,
    #[serde(alias = "with_vectors")]
    with_vector: Option<WithVector>,
    score_threshold: Option<f32>,
    shard_key: Option<Value>,
}

/// `POST /collections/{name}/points/search`: a list of hits.
pub async fn search(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<SearchBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    // `[…]` searches the unnamed vector, `{"name": …, "vector": […]}` a named one.
    let query = match &body.vector {
        Value::Object(named) if named.contains_key("name") => {
            let using = named.get("name").and_then(Value::as_str).map(str::to_owned);
            let vector = named.get("vector").unwrap_or(&Value::Null);
            nearest(dense_vector(vector, "vector.vector")?, using)
        }
        vector => nearest(dense_vector(vector, "vector")?, None),
    };
    let parts = QueryParts {
        query: Some(query),
        filter: body.filter,
        score_threshold: body.score_threshold,
        limit: limit_from(Some(body.limit))?,
        offset: offset_from(body.offset)?,
        with_payload: payload_or_default(body.with_payload, false),
        with_vector: vectors_or_none(body.with_vector),
    };
    let hits = state.ops.query(&name, parts).await?;
    Ok(answer(hits.into_iter().map(ScoredOut::from).collect::<Vec<_>>(), started))
}

/// `POST /collections/{name}/points/query`'s body (the universal query API). `params`
/// is tuning and ignored, as for search.
#[derive(Deserialize)]
pub struct QueryBody {
    query: Option<Value>,
    using: Option<String>,
    filter: Option<Filter>,
    score_threshold: Option<f32>,
    limit: Option<u64>,
    offset: Option<u64>,
    with_payload: Option<WithPayloadInterface>,
    #[serde(alias = "with_vectors")]
    with_vector: Option<WithVector>,
    prefetch: Option<Value>,
    lookup_from: Option<Value>,
    shard_key: Option<Value>,
}

#[derive(Serialize)]
struct QueryResult {
    points: Vec<ScoredOut>,
}

/// `POST /collections/{name}/points/query`: `{"points": [hits]}`.
pub async fn query(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<QueryBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    refuse_shard_key(&body.shard_key)?;
    refuse_present(&[("prefetch", &body.prefetch), ("lookup_from", &body.lookup_from)])?;
    let parts = QueryParts {
        query: body.query.map(|q| scoring_query(q, body.using)).transpose()?,
        filter: body.filter,
        score_threshold: body.score_threshold,
        limit: limit_from(body.limit)?,
        offset: offset_from(body.offset)?,
        with_payload: payload_or_default(body.with_payload, false),
        with_vector: vectors_or_none(body.with_vector),
    };
    let points = state.ops.query(&name, parts).await?.into_iter().map(ScoredOut::from).collect();
    Ok(answer(QueryResult { points }, started))
}

/// The engine query for a query request's `query`: a vector or `{"nearest": vector}`,
/// or `{"order_by": …}`. The other kinds Qdrant knows are refused by name.
fn scoring_query(query: Value, using: Option<String>) -> Result<ScoringQuery, ApiError> {
    let unsupported_query =
        |kind: &str| -> Result<ScoringQuery, ApiError> { Err(unsupported(format!("{kind} queries")).into()) };
    match query {
        Value::Number(_) | Value::String(_) => unsupported_query("nearest-to-a-point-id"),
        Value::Array(_) => Ok(nearest(dense_vector(&query, "query")?, using)),
        Value::Object(mut object) => {
            if let Some(vector) = object.remove("nearest") {
                if object.get("mmr").is_some_and(|mmr| !mmr.is_null()) {
                    return unsupported_query("MMR");
                }
                return match vector {
                    Value::Number(_) | Value::String(_) => unsupported_query("nearest-to-a-point-id"),
                    vector => Ok(nearest(dense_vector(&vector, "query.nearest")?, using)),
                };
            }
            if let Some(order_by) = object.remove("order_by") {
                let order_by: OrderByInterface = serde_json::from_value(order_by).map_err(|err| {
                    ApiError::bad_request(format!("Json deserialize error: query.order_by: {err}"))
                })?;
                return Ok(ScoringQuery::OrderBy(match order_by {
                    OrderByInterface::Key(key) => OrderBy { key, direction: None, start_from: None },
                    OrderByInterface::Struct(order_by) => order_by,
                }));
            }
            for kind in [
                "recommend",
                "discover",
                "context",
                "fusion",
                "rrf",
                "formula",
                "sample",
                "relevance_feedback",
            ] {
                if object.contains_key(kind) {
                    return unsupported_query(kind);
                }
            }
            if object.contains_key("indices") {
                return unsupported_query("sparse vector");
            }
            if ["text", "image", "object"].iter().any(|k| object.contains_key(*k)) {
                return unsupported_query("server-side inference");
            }
            Err(ApiError::bad_request(format!(
                "Json deserialize error: `query` must be a vector, {{\"nearest\": …}} or {{\"order_by\": …}}, got {}",
                Value::Object(object)
            )))
        }
        other => Err(ApiError::bad_request(format!("Json deserialize error: `query` cannot be {other}"))),
    }
}

/// `PUT /collections/{name}/index`'s body.
#[derive(Deserialize)]
pub struct IndexBody {
    field_name: String,
    field_schema: Option<PayloadFieldSchema>,
}

/// `PUT /collections/{name}/index`: a real payload index in the engine.
pub async fn create_index(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<IndexBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let Some(field_schema) = body.field_schema else {
        return Err(ApiError::bad_request("`field_schema` is required (e.g. \"keyword\")"));
    };
    let operation = UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
        field_name: json_path(&body.field_name)?,
        field_schema: Some(field_schema),
    }));
    apply(&state, &name, operation, started).await
}

/// `DELETE /collections/{name}/index/{field}`.
pub async fn delete_index(
    State(state): State<RestState>,
    Path((name, field)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let operation =
        UpdateOperation::FieldIndexOperation(FieldIndexOperations::DeleteIndex(json_path(&field)?));
    apply(&state, &name, operation, started).await
}
