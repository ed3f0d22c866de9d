//! The collections on disk: one qdrant-edge shard per collection, one directory each.
//!
//! qdrant-edge's API is synchronous and may block on disk I/O, so every engine call
//! runs on tokio's blocking pool. Each collection has its own lock: reads share it,
//! writes take it exclusively. Writes are exclusive because `EdgeShard::flush` grabs the
//! engine's internal locks with `try_lock` and panics if an update holds them.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use qdrant_edge::external::uuid::Uuid;
use qdrant_edge::{EdgeConfig, EdgeShard};
use tokio::sync::RwLock as AsyncRwLock;
use tonic::Status;

use crate::convert::engine_error;

/// File qdrant-edge writes into every shard directory; a subdirectory of the data dir
/// holding it is a collection.
const EDGE_CONFIG_FILE: &str = "edge_config.json";

/// Characters Qdrant itself rejects in collection names; we also use names as
/// directory names, so path separators must never get through.
const FORBIDDEN_NAME_CHARS: &[char] = &['<', '>', ':', '"', '/', '\\', '|', '?', '*', '\0'];

/// One collection: its shard, or `None` once it has been deleted or closed.
struct Collection {
    shard: RwLock<Option<EdgeShard>>,
}

/// All collections of one data directory.
pub struct Store {
    data_dir: PathBuf,
    /// Held for writing only while collections are created, deleted or closed, so
    /// that a name and its directory change together.
    collections: AsyncRwLock<HashMap<String, Arc<Collection>>>,
}

impl Store {
    /// Opens `data_dir` (creating it if needed) and loads every collection in it.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;

        fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let mut collections = HashMap::new();
        let entries =
            fs::read_dir(data_dir).with_context(|| format!("cannot read data dir {}", data_dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", data_dir.display()))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                // Leftovers of a delete that was interrupted (see `delete`).
                if name.starts_with(".deleted-") {
                    fs::remove_dir_all(&path)
                        .with_context(|| format!("cannot remove deleted collection {}", path.display()))?;
                }
                continue;
            }
            if !path.join(EDGE_CONFIG_FILE).is_file() {
                continue;
            }
            let shard = EdgeShard::load(&path, None).map_err(|err| {
                anyhow::anyhow!("cannot load collection `{name}` from {}: {err}", path.display())
            })?;
            collections.insert(name, Arc::new(Collection { shard: RwLock::new(Some(shard)) }));
        }
        Ok(Self { data_dir: data_dir.to_owned(), collections: AsyncRwLock::new(collections) })
    }

    /// Names of all collections, sorted.
    pub async fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.collections.read().await.keys().cloned().collect();
        names.sort();
        names
    }

    /// Whether a collection exists.
    pub async fn exists(&self, name: &str) -> bool {
        self.collections.read().await.contains_key(name)
    }

    /// Creates a collection with the given engine config.
    pub async fn create(&self, name: &str, config: EdgeConfig) -> Result<(), Status> {
        validate_name(name)?;
        let mut collections = self.collections.write().await;
        if collections.contains_key(name) {
            return Err(Status::already_exists(format!("Wrong input: Collection `{name}` already exists!")));
        }
        let dir = self.data_dir.join(name);
        let shard = blocking(move || {
            if dir.exists() {
                // Not a loaded collection (startup loads all of them), so it is
                // a leftover of a create that failed half-way.
                fs::remove_dir_all(&dir).map_err(|err| {
                    Status::internal(format!("cannot clear stale {}: {err}", dir.display()))
                })?;
            }
            fs::create_dir_all(&dir)
                .map_err(|err| Status::internal(format!("cannot create {}: {err}", dir.display())))?;
            EdgeShard::new(&dir, config).map_err(|err| {
                // Leave no half-made collection behind; failing to clean up only
                // means the next create of this name clears it.
                let _ = fs::remove_dir_all(&dir);
                engine_error("cannot create collection", err)
            })
        })
        .await?;
        collections.insert(name.to_owned(), Arc::new(Collection { shard: RwLock::new(Some(shard)) }));
        Ok(())
    }

    /// Deletes a collection and its data. Returns false if there was no such collection.
    pub async fn delete(&self, name: &str) -> Result<bool, Status> {
        let mut collections = self.collections.write().await;
        let Some(collection) = collections.remove(name) else {
            return Ok(false);
        };
        let dir = self.data_dir.join(name);
        let trash = self.data_dir.join(format!(".deleted-{name}-{}", Uuid::new_v4().simple()));
        blocking(move || {
            // Waits for requests still using the shard, then drops (and so flushes)
            // it before its files go away.
            drop(write_lock(&collection.shard).take());
            // Rename first so a crash half-way through removal cannot leave a
            // collection that loads with part of its data.
            fs::rename(&dir, &trash)
                .map_err(|err| Status::internal(format!("cannot remove {}: {err}", dir.display())))?;
            fs::remove_dir_all(&trash)
                .map_err(|err| Status::internal(format!("cannot remove {}: {err}", trash.display())))
        })
        .await?;
        Ok(true)
    }

    /// Runs a read-only engine call on a collection.
    pub async fn read<T, F>(&self, name: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, Status> + Send + 'static,
    {
        let collection = self.get(name).await?;
        let name = name.to_owned();
        blocking(move || {
            let guard = collection.shard.read().unwrap_or_else(PoisonError::into_inner);
            let shard = guard.as_ref().ok_or_else(|| not_found(&name))?;
            f(shard)
        })
        .await
    }

    /// Runs a mutating engine call on a collection, then flushes it to disk.
    ///
    /// The flush makes every acknowledged write durable: qdrant-edge does not replay
    /// its WAL on load, so anything not flushed would be lost if the server is killed.
    pub async fn write<T, F>(&self, name: &str, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&EdgeShard) -> Result<T, Status> + Send + 'static,
    {
        let collection = self.get(name).await?;
        let name = name.to_owned();
        blocking(move || {
            let guard = write_lock(&collection.shard);
            let shard = guard.as_ref().ok_or_else(|| not_found(&name))?;
            let result = f(shard);
            shard.flush();
            result
        })
        .await
    }

    /// Flushes and closes every collection; used on shutdown.
    pub async fn close(&self) {
        let mut collections = self.collections.write().await;
        let all: Vec<Arc<Collection>> = collections.drain().map(|(_, c)| c).collect();
        let closed = blocking(move || {
            for collection in all {
                // Dropping an EdgeShard flushes it.
                drop(write_lock(&collection.shard).take());
            }
            Ok(())
        })
        .await;
        if let Err(status) = closed {
            tracing::error!(error = %status.message(), "flushing collections on shutdown failed");
        }
    }

    async fn get(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.collections.read().await.get(name).cloned().ok_or_else(|| not_found(name))
    }
}

/// The error Qdrant returns for a missing collection.
pub fn not_found(name: &str) -> Status {
    Status::not_found(format!("Not found: Collection `{name}` doesn't exist!"))
}

/// Rejects names Qdrant rejects, and anything that is not a plain directory name.
fn validate_name(name: &str) -> Result<(), Status> {
    let bad =
        name.is_empty() || name.len() > 255 || name.starts_with('.') || name.contains(FORBIDDEN_NAME_CHARS);
    if bad {
        return Err(Status::invalid_argument(format!(
            "Wrong input: collection name `{name}` is not allowed: it must be 1-255 characters, \
             not start with `.`, and contain none of <>:\"/\\|?* or NUL"
        )));
    }
    Ok(())
}

/// A panic while the lock was held leaves the shard as the engine left it; the engine
/// keeps its own consistency, so later requests may still use it.
fn write_lock(lock: &RwLock<Option<EdgeShard>>) -> std::sync::RwLockWriteGuard<'_, Option<EdgeShard>> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// Runs blocking engine work off the async runtime; a panic becomes an internal error.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|err| Status::internal(format!("engine task failed: {err}")))?
}

#[cfg(test)]
mod tests {
    use super::validate_name;

    #[test]
    fn names_that_are_not_plain_directory_names_are_rejected() {
        for bad in ["", ".", "..", ".hidden", "a/b", "a\\b", "a:b", "a\0b"] {
            assert!(validate_name(bad).is_err(), "{bad:?} must be rejected");
        }
        for good in ["memories", "chat-memory_v2", "a.b"] {
            assert!(validate_name(good).is_ok(), "{good:?} must be accepted");
        }
    }
}
