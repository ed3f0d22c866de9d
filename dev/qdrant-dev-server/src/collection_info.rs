//! What a collection's info reports, shared by the gRPC and REST APIs so both answer
//! with the same values.
//!
//! Official clients validate the info strictly (a missing optimizer, HNSW or WAL field
//! fails their parsing), so every field a real Qdrant always sets is given a value
//! here: the engine's own setting where it has one, else the default a Qdrant server
//! reports.

use qdrant_edge::{EdgeConfig, EdgeShard, HnswIndexConfig, ShardInfo, WalOptions};

/// Qdrant's defaults for optimizer settings the engine keeps unset (they live in a
/// private module of qdrant-edge, so they are restated here).
const DEFAULT_DELETED_THRESHOLD: f64 = 0.2;
const DEFAULT_VACUUM_MIN_VECTOR_NUMBER: u64 = 1000;
const DEFAULT_INDEXING_THRESHOLD_KB: u64 = 10_000;

/// A collection's config and counts, read from its shard in one go.
pub struct CollectionSummary {
    /// The engine config the collection was created with.
    pub config: EdgeConfig,
    /// Point, segment and payload index counts.
    pub info: ShardInfo,
}

/// The optimizer settings as Qdrant reports them.
pub struct OptimizerSettings {
    /// Fraction of deleted points that triggers a vacuum.
    pub deleted_threshold: f64,
    /// Smallest segment a vacuum considers.
    pub vacuum_min_vector_number: u64,
    /// Target segment count; 0 means chosen from the CPU count.
    pub default_segment_number: u64,
    /// Largest segment in KB, if set.
    pub max_segment_size: Option<u64>,
    /// Segment size in KB above which an HNSW index is built.
    pub indexing_threshold: u64,
    /// Seconds between forced flushes.
    pub flush_interval_sec: u64,
}

/// The WAL settings as Qdrant reports them.
pub struct WalSettings {
    /// Size of one WAL segment in MB.
    pub capacity_mb: u64,
    /// WAL segments created ahead of use.
    pub segments_ahead: u64,
    /// Closed WAL segments kept.
    pub retain_closed: u64,
}

impl CollectionSummary {
    /// Reads the summary of one shard.
    pub fn of(shard: &EdgeShard) -> Self {
        Self { config: shard.config().clone(), info: shard.info() }
    }

    /// The collection's HNSW settings (the engine fills every required one).
    pub fn hnsw(&self) -> &HnswIndexConfig {
        &self.config.hnsw_config
    }

    /// The optimizer settings: the engine's where set, Qdrant's defaults otherwise.
    pub fn optimizer(&self) -> OptimizerSettings {
        let optimizers = &self.config.optimizers;
        OptimizerSettings {
            deleted_threshold: optimizers.deleted_threshold.unwrap_or(DEFAULT_DELETED_THRESHOLD),
            vacuum_min_vector_number: optimizers
                .vacuum_min_vector_number
                .map_or(DEFAULT_VACUUM_MIN_VECTOR_NUMBER, |n| n as u64),
            default_segment_number: optimizers.default_segment_number.map_or(0, |n| n as u64),
            max_segment_size: optimizers.max_segment_size.map(|n| n as u64),
            indexing_threshold: optimizers
                .indexing_threshold
                .map_or(DEFAULT_INDEXING_THRESHOLD_KB, |n| n as u64),
            // Every acknowledged write is flushed at once (see store.rs), so there is
            // no interval between forced flushes.
            flush_interval_sec: 0,
        }
    }

    /// The WAL settings the shard was opened with.
    pub fn wal(&self) -> WalSettings {
        let wal = self.config.wal_options.clone().unwrap_or_default();
        WalSettings {
            capacity_mb: mb(&wal),
            segments_ahead: wal.segment_queue_len as u64,
            retain_closed: wal.retain_closed.get() as u64,
        }
    }
}

/// WAL segment capacity in whole MB, as Qdrant configures it (at least 1).
fn mb(wal: &WalOptions) -> u64 {
    ((wal.segment_capacity / (1024 * 1024)) as u64).max(1)
}
