//! `qdrant.Collections`: create, inspect, list and delete collections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use qdrant_client::qdrant as pb;
use qdrant_client::qdrant::collections_server::Collections;
use qdrant_edge::{Distance, EdgeConfig, EdgeVectorParams, DEFAULT_VECTOR_NAME};
use tonic::{Request, Response, Status};

use crate::collection_info::CollectionSummary;
use crate::convert::{distance_from_pb, distance_to_pb, field_type_to_pb, unsupported};
use crate::store::Store;

/// Serves the collection methods over a [`Store`].
pub struct CollectionsService {
    store: Arc<Store>,
}

impl CollectionsService {
    /// A service over `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }
}

/// Engine config for a new collection. Only the vector shape is taken: HNSW,
/// optimizer, WAL, quantization and on-disk settings are tuning a dev server does
/// without, so they are accepted and ignored.
fn edge_config(request: pb::CreateCollection) -> Result<EdgeConfig, Status> {
    if request.sparse_vectors_config.is_some_and(|sparse| !sparse.map.is_empty()) {
        return Err(unsupported("sparse vectors"));
    }
    let vectors = match request.vectors_config.and_then(|v| v.config) {
        Some(pb::vectors_config::Config::Params(params)) => {
            HashMap::from([(DEFAULT_VECTOR_NAME.to_owned(), vector_params(params)?)])
        }
        Some(pb::vectors_config::Config::ParamsMap(map)) => map
            .map
            .into_iter()
            .map(|(name, params)| Ok((name, vector_params(params)?)))
            .collect::<Result<_, Status>>()?,
        None => {
            return Err(Status::invalid_argument(
                "vectors_config is required (qdrant-dev-server stores dense vectors only)",
            ))
        }
    };
    Ok(EdgeConfig { vectors, ..EdgeConfig::default() })
}

fn vector_params(params: pb::VectorParams) -> Result<EdgeVectorParams, Status> {
    if params.multivector_config.is_some() {
        return Err(unsupported("multi-vectors"));
    }
    dense_vector_params(params.size, distance_from_pb(params.distance)?)
}

/// Engine params for one dense vector; shared with the REST API.
pub fn dense_vector_params(size: u64, distance: Distance) -> Result<EdgeVectorParams, Status> {
    if size == 0 {
        return Err(Status::invalid_argument("vector size must be at least 1"));
    }
    let size = usize::try_from(size)
        .map_err(|_| Status::invalid_argument(format!("vector size {size} is too large")))?;
    Ok(EdgeVectorParams {
        size,
        distance,
        on_disk: None,
        multivector_config: None,
        datatype: None,
        quantization_config: None,
        hnsw_config: None,
    })
}

/// What `GetCollectionInfo` reports. There is one local shard with no background
/// optimisation, so the collection is always green once it exists. Every field a
/// Qdrant server always sets is set, as clients in other languages require them.
// `on_disk_payload` is deprecated in favour of `payload.memory`, but clients built
// against older Qdrant versions still read it, and a real Qdrant still sends it.
#[allow(deprecated)]
fn collection_info(summary: CollectionSummary) -> pb::CollectionInfo {
    let params_of = |p: &EdgeVectorParams| pb::VectorParams {
        size: p.size as u64,
        distance: distance_to_pb(p.distance) as i32,
        ..Default::default()
    };
    let config = &summary.config;
    let vectors_config = match config.vectors.get(DEFAULT_VECTOR_NAME) {
        Some(params) if config.vectors.len() == 1 => pb::vectors_config::Config::Params(params_of(params)),
        _ => pb::vectors_config::Config::ParamsMap(pb::VectorParamsMap {
            map: config.vectors.iter().map(|(name, params)| (name.clone(), params_of(params))).collect(),
        }),
    };
    let hnsw = summary.hnsw();
    let optimizer = summary.optimizer();
    let wal = summary.wal();
    let payload_schema = summary
        .info
        .payload_schema
        .iter()
        .map(|(key, index)| {
            let schema = pb::PayloadSchemaInfo {
                data_type: field_type_to_pb(index.data_type) as i32,
                params: None,
                points: Some(index.points as u64),
            };
            (key.to_string(), schema)
        })
        .collect();
    pb::CollectionInfo {
        status: pb::CollectionStatus::Green as i32,
        optimizer_status: Some(pb::OptimizerStatus { ok: true, error: String::new() }),
        segments_count: summary.info.segments_count as u64,
        config: Some(pb::CollectionConfig {
            params: Some(pb::CollectionParams {
                shard_number: 1,
                on_disk_payload: config.on_disk_payload,
                vectors_config: Some(pb::VectorsConfig { config: Some(vectors_config) }),
                replication_factor: Some(1),
                write_consistency_factor: Some(1),
                ..Default::default()
            }),
            hnsw_config: Some(pb::HnswConfigDiff {
                m: Some(hnsw.m as u64),
                ef_construct: Some(hnsw.ef_construct as u64),
                full_scan_threshold: Some(hnsw.full_scan_threshold as u64),
                max_indexing_threads: Some(hnsw.max_indexing_threads as u64),
                payload_m: hnsw.payload_m.map(|m| m as u64),
                ..Default::default()
            }),
            optimizer_config: Some(pb::OptimizersConfigDiff {
                deleted_threshold: Some(optimizer.deleted_threshold),
                vacuum_min_vector_number: Some(optimizer.vacuum_min_vector_number),
                default_segment_number: Some(optimizer.default_segment_number),
                max_segment_size: optimizer.max_segment_size,
                indexing_threshold: Some(optimizer.indexing_threshold),
                flush_interval_sec: Some(optimizer.flush_interval_sec),
                max_optimization_threads: Some(pb::MaxOptimizationThreads {
                    variant: Some(pb::max_optimization_threads::Variant::Setting(
                        pb::max_optimization_threads::Setting::Auto as i32,
                    )),
                }),
                ..Default::default()
            }),
            wal_config: Some(pb::WalConfigDiff {
                wal_capacity_mb: Some(wal.capacity_mb),
                wal_segments_ahead: Some(wal.segments_ahead),
                wal_retain_closed: Some(wal.retain_closed),
            }),
            strict_mode_config: Some(pb::StrictModeConfig { enabled: Some(false), ..Default::default() }),
            ..Default::default()
        }),
        payload_schema,
        points_count: Some(summary.info.points_count as u64),
        indexed_vectors_count: Some(summary.info.indexed_vectors_count as u64),
        // Writes are applied before they are answered: nothing ever waits in a queue.
        update_queue: Some(pb::UpdateQueueInfo { length: 0, deferred_points: None }),
        ..Default::default()
    }
}

fn not_served<T>(method: &str) -> Result<Response<T>, Status> {
    Err(unsupported(format!("Collections/{method}")))
}

#[tonic::async_trait]
impl Collections for CollectionsService {
    async fn get(
        &self,
        request: Request<pb::GetCollectionInfoRequest>,
    ) -> Result<Response<pb::GetCollectionInfoResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let summary = self.store.read(&name, |shard| Ok(CollectionSummary::of(shard))).await?;
        let info = collection_info(summary);
        Ok(Response::new(pb::GetCollectionInfoResponse {
            result: Some(info),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn list(
        &self,
        _request: Request<pb::ListCollectionsRequest>,
    ) -> Result<Response<pb::ListCollectionsResponse>, Status> {
        let started = Instant::now();
        let collections =
            self.store.names().await.into_iter().map(|name| pb::CollectionDescription { name }).collect();
        Ok(Response::new(pb::ListCollectionsResponse { collections, time: started.elapsed().as_secs_f64() }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateCollection>,
    ) -> Result<Response<pb::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let name = request.collection_name.clone();
        let config = edge_config(request)?;
        self.store.create(&name, config).await?;
        tracing::info!(collection = %name, "collection created");
        Ok(Response::new(pb::CollectionOperationResponse {
            result: true,
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn update(
        &self,
        _request: Request<pb::UpdateCollection>,
    ) -> Result<Response<pb::CollectionOperationResponse>, Status> {
        not_served("Update")
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteCollection>,
    ) -> Result<Response<pb::CollectionOperationResponse>, Status> {
        let started = Instant::now();
        let name = request.into_inner().collection_name;
        let deleted = self.store.delete(&name).await?;
        if deleted {
            tracing::info!(collection = %name, "collection deleted");
        }
        Ok(Response::new(pb::CollectionOperationResponse {
            result: deleted,
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn update_aliases(
        &self,
        _request: Request<pb::ChangeAliases>,
    ) -> Result<Response<pb::CollectionOperationResponse>, Status> {
        not_served("UpdateAliases")
    }

    async fn list_collection_aliases(
        &self,
        _request: Request<pb::ListCollectionAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        not_served("ListCollectionAliases")
    }

    async fn list_aliases(
        &self,
        _request: Request<pb::ListAliasesRequest>,
    ) -> Result<Response<pb::ListAliasesResponse>, Status> {
        not_served("ListAliases")
    }

    async fn collection_cluster_info(
        &self,
        _request: Request<pb::CollectionClusterInfoRequest>,
    ) -> Result<Response<pb::CollectionClusterInfoResponse>, Status> {
        not_served("CollectionClusterInfo")
    }

    async fn collection_exists(
        &self,
        request: Request<pb::CollectionExistsRequest>,
    ) -> Result<Response<pb::CollectionExistsResponse>, Status> {
        let started = Instant::now();
        let exists = self.store.exists(&request.into_inner().collection_name).await;
        Ok(Response::new(pb::CollectionExistsResponse {
            result: Some(pb::CollectionExists { exists }),
            time: started.elapsed().as_secs_f64(),
        }))
    }

    async fn update_collection_cluster_setup(
        &self,
        _request: Request<pb::UpdateCollectionClusterSetupRequest>,
    ) -> Result<Response<pb::UpdateCollectionClusterSetupResponse>, Status> {
        not_served("UpdateCollectionClusterSetup")
    }

    async fn create_shard_key(
        &self,
        _request: Request<pb::CreateShardKeyRequest>,
    ) -> Result<Response<pb::CreateShardKeyResponse>, Status> {
        not_served("CreateShardKey")
    }

    async fn delete_shard_key(
        &self,
        _request: Request<pb::DeleteShardKeyRequest>,
    ) -> Result<Response<pb::DeleteShardKeyResponse>, Status> {
        not_served("DeleteShardKey")
    }

    async fn list_shard_keys(
        &self,
        _request: Request<pb::ListShardKeysRequest>,
    ) -> Result<Response<pb::ListShardKeysResponse>, Status> {
        not_served("ListShardKeys")
    }
}
