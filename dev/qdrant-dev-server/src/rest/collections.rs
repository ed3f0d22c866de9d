//! REST collection routes: list, info, create, delete, exists.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::Response;
use qdrant_edge::{Distance, EdgeConfig, EdgeVectorParams, PayloadIndexInfo, DEFAULT_VECTOR_NAME};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tonic::Status;

use super::{answer, ApiError, Body, RestState};
use crate::collection_info::CollectionSummary;
use crate::collections::dense_vector_params;
use crate::convert::unsupported;

/// `GET /collections`.
pub async fn list(State(state): State<RestState>) -> Response {
    let started = Instant::now();
    #[derive(Serialize)]
    struct Name {
        name: String,
    }
    #[derive(Serialize)]
    struct Collections {
        collections: Vec<Name>,
    }
    let collections = state.store.names().await.into_iter().map(|name| Name { name }).collect();
    answer(Collections { collections }, started)
}

/// `GET /collections/{name}/exists`.
pub async fn exists(State(state): State<RestState>, Path(name): Path<String>) -> Response {
    let started = Instant::now();
    #[derive(Serialize)]
    struct Exists {
        exists: bool,
    }
    answer(Exists { exists: state.store.exists(&name).await }, started)
}

/// `DELETE /collections/{name}`: `false` when there was no such collection, as in Qdrant.
pub async fn remove(State(state): State<RestState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let deleted = state.store.delete(&name).await?;
    if deleted {
        tracing::info!(collection = %name, "collection deleted");
    }
    Ok(answer(deleted, started))
}

/// `PUT /collections/{name}`'s body. Only the vector shape is used: HNSW, optimizer,
/// WAL, quantization, sharding and on-disk settings are tuning a dev server does
/// without, so they are accepted and ignored (as over gRPC).
#[derive(Deserialize)]
pub struct CreateBody {
    vectors: Option<Value>,
    #[serde(default)]
    sparse_vectors: Option<Map<String, Value>>,
}

/// One vector's params in a create request.
#[derive(Deserialize)]
struct VectorParamsIn {
    size: u64,
    distance: Distance,
    #[serde(default)]
    multivector_config: Option<Value>,
}

/// `PUT /collections/{name}`.
pub async fn create(
    State(state): State<RestState>,
    Path(name): Path<String>,
    Body(body): Body<CreateBody>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let config = edge_config(body)?;
    state.store.create(&name, config).await?;
    tracing::info!(collection = %name, "collection created");
    Ok(answer(true, started))
}

fn edge_config(body: CreateBody) -> Result<EdgeConfig, ApiError> {
    if body.sparse_vectors.is_some_and(|sparse| !sparse.is_empty()) {
        return Err(unsupported("sparse vectors").into());
    }
    let vectors = match body.vectors {
        // One unnamed vector is `{"size": …, "distance": …}`; named ones are a map of those.
        Some(Value::Object(map)) if map.contains_key("size") => {
            HashMap::from([(DEFAULT_VECTOR_NAME.to_owned(), vector_params(Value::Object(map), "vectors")?)])
        }
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(name, params)| {
                let params = vector_params(params, &format!("vectors.{name}"))?;
                Ok((name, params))
            })
            .collect::<Result<_, ApiError>>()?,
        Some(other) => {
            let shape = "{\"size\": …, \"distance\": …} or named vectors";
            let message =
                format!("Json deserialize error: `vectors` must be an object ({shape}), got {other}");
            return Err(ApiError::bad_request(message));
        }
        None => {
            return Err(ApiError::bad_request(
                "`vectors` is required (qdrant-dev-server stores dense vectors only)",
            ))
        }
    };
    Ok(EdgeConfig { vectors, ..EdgeConfig::default() })
}

fn vector_params(value: Value, at: &str) -> Result<EdgeVectorParams, ApiError> {
    let params: VectorParamsIn = serde_json::from_value(value)
        .map_err(|err| ApiError::bad_request(format!("Json deserialize error: {at}: {err}")))?;
    if params.multivector_config.is_some_and(|c| !c.is_null()) {
        return Err(unsupported("multi-vectors").into());
    }
    Ok(dense_vector_params(params.size, params.distance)?)
}

/// `GET /collections/{name}`.
pub async fn info(State(state): State<RestState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let started = Instant::now();
    let summary = state.store.read(&name, |shard| Ok::<_, Status>(CollectionSummary::of(shard))).await?;
    Ok(answer(CollectionInfoOut::from(summary), started))
}

/// Qdrant's `CollectionInfo`, with every field a Qdrant server always sets.
#[derive(Serialize)]
struct CollectionInfoOut {
    status: &'static str,
    optimizer_status: &'static str,
    indexed_vectors_count: u64,
    points_count: u64,
    segments_count: u64,
    config: ConfigOut,
    payload_schema: BTreeMap<String, PayloadIndexInfo>,
    update_queue: UpdateQueueOut,
}

#[derive(Serialize)]
struct ConfigOut {
    params: ParamsOut,
    hnsw_config: HnswOut,
    optimizer_config: OptimizerOut,
    wal_config: WalOut,
    quantization_config: Option<()>,
    strict_mode_config: StrictModeOut,
}

#[derive(Serialize)]
struct ParamsOut {
    vectors: VectorsOut,
    shard_number: u32,
    replication_factor: u32,
    write_consistency_factor: u32,
    on_disk_payload: bool,
}

/// One unnamed vector is shown as its params, named vectors as a map of them.
#[derive(Serialize)]
#[serde(untagged)]
enum VectorsOut {
    Single(VectorParamsOut),
    Named(BTreeMap<String, VectorParamsOut>),
}

#[derive(Serialize)]
struct VectorParamsOut {
    size: usize,
    distance: Distance,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_disk: Option<bool>,
}

#[derive(Serialize)]
struct HnswOut {
    m: usize,
    ef_construct: usize,
    full_scan_threshold: usize,
    max_indexing_threads: usize,
    on_disk: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_m: Option<usize>,
}

#[derive(Serialize)]
struct OptimizerOut {
    deleted_threshold: f64,
    vacuum_min_vector_number: u64,
    default_segment_number: u64,
    max_segment_size: Option<u64>,
    memmap_threshold: Option<u64>,
    indexing_threshold: u64,
    flush_interval_sec: u64,
    max_optimization_threads: Option<u64>,
}

#[derive(Serialize)]
struct WalOut {
    wal_capacity_mb: u64,
    wal_segments_ahead: u64,
    wal_retain_closed: u64,
}

#[derive(Serialize)]
struct StrictModeOut {
    enabled: bool,
}

#[derive(Serialize)]
struct UpdateQueueOut {
    length: u64,
}

impl From<CollectionSummary> for CollectionInfoOut {
    fn from(summary: CollectionSummary) -> Self {
        let config = &summary.config;
        let params_of =
            |p: &EdgeVectorParams| VectorParamsOut { size: p.size, distance: p.distance, on_disk: p.on_disk };
        let vectors = match config.vectors.get(DEFAULT_VECTOR_NAME) {
            Some(params) if config.vectors.len() == 1 => VectorsOut::Single(params_of(params)),
            _ => VectorsOut::Named(
                config.vectors.iter().map(|(name, p)| (name.clone(), params_of(p))).collect(),
            ),
        };
        let hnsw = summary.hnsw();
        let optimizer = summary.optimizer();
        let wal = summary.wal();
        Self {
            // One local shard with no background optimisation: green once it exists.
            status: "green",
            optimizer_status: "ok",
            indexed_vectors_count: summary.info.indexed_vectors_count as u64,
            points_count: summary.info.points_count as u64,
            segments_count: summary.info.segments_count as u64,
            config: ConfigOut {
                params: ParamsOut {
                    vectors,
                    shard_number: 1,
                    replication_factor: 1,
                    write_consistency_factor: 1,
                    on_disk_payload: config.on_disk_payload,
                },
                hnsw_config: HnswOut {
                    m: hnsw.m,
                    ef_construct: hnsw.ef_construct,
                    full_scan_threshold: hnsw.full_scan_threshold,
                    max_indexing_threads: hnsw.max_indexing_threads,
                    on_disk: hnsw.on_disk.unwrap_or(false),
                    payload_m: hnsw.payload_m,
                },
                optimizer_config: OptimizerOut {
                    deleted_threshold: optimizer.deleted_threshold,
                    vacuum_min_vector_number: optimizer.vacuum_min_vector_number,
                    default_segment_number: optimizer.default_segment_number,
                    max_segment_size: optimizer.max_segment_size,
                    memmap_threshold: None,
                    indexing_threshold: optimizer.indexing_threshold,
                    flush_interval_sec: optimizer.flush_interval_sec,
                    max_optimization_threads: None,
                },
                wal_config: WalOut {
                    wal_capacity_mb: wal.capacity_mb,
                    wal_segments_ahead: wal.segments_ahead,
                    wal_retain_closed: wal.retain_closed,
                },
                quantization_config: None,
                strict_mode_config: StrictModeOut { enabled: false },
            },
            payload_schema: summary
                .info
                .payload_schema
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            update_queue: UpdateQueueOut { length: 0 },
        }
    }
}
