//! Uploaded sources, stored once per content hash under `sources/`. A
//! source stays while a version of any script names it or a deploy is
//! using it. It is removed when its last script is deleted, or by the
//! hourly collection, which also finds the sources of failed redeploys
//! because no version names them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;

use super::Controller;
use crate::error::ApiError;

/// Source hashes that deploys in progress use, with a count per hash.
#[derive(Default)]
pub struct SourcesInUse {
    deploys: Mutex<HashMap<String, usize>>,
}

/// A deploy's use of a source, released when dropped.
pub struct SourceUse<'a> {
    sources: &'a SourcesInUse,
    hash: String,
}

impl Drop for SourceUse<'_> {
    fn drop(&mut self) {
        let mut deploys = self.sources.deploys.lock().expect("sources in use poisoned");
        if let Some(count) = deploys.get_mut(&self.hash) {
            *count -= 1;
            if *count == 0 {
                deploys.remove(&self.hash);
            }
        }
    }
}

impl Controller {
    /// Marks the source `hash` as used by a deploy until the returned guard
    /// is dropped. Take it before storing the source and keep it until the
    /// version is recorded.
    pub(super) fn use_source(&self, hash: &str) -> SourceUse<'_> {
        *self.sources_in_use.deploys.lock().expect("sources in use poisoned").entry(hash.to_string()).or_default() += 1;
        SourceUse { sources: &self.sources_in_use, hash: hash.to_string() }
    }

    /// Removes the sources among `hashes` that no stored version names and
    /// no deploy uses. Returns how many were removed.
    pub(super) async fn remove_unused_sources(&self, hashes: Vec<String>) -> Result<usize, ApiError> {
        let mut removing: Vec<PathBuf> = Vec::new();
        {
            // Held while the store is read and the folders are moved, so a
            // deploy cannot start using a source in between.
            let deploys = self.sources_in_use.deploys.lock().expect("sources in use poisoned");
            let named = self.store.source_hashes()?;
            for hash in hashes {
                if deploys.contains_key(&hash) || named.contains(&hash) {
                    continue;
                }
                let dir = self.paths.sources().join(&hash);
                let moved = self.paths.temp().join(format!("removing-source-{hash}"));
                match std::fs::rename(&dir, &moved) {
                    Ok(()) => removing.push(moved),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => tracing::warn!(source = %hash, %error, "moving an unused source aside failed"),
                }
            }
        }
        let count = removing.len();
        tokio::task::spawn_blocking(move || {
            for dir in removing {
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), %error, "removing an unused source failed");
                }
            }
        })
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("source removal task failed: {error}")))?;
        Ok(count)
    }

    /// Removes every stored source that no version names and no deploy uses.
    pub(super) async fn collect_unused_sources(&self) -> Result<usize, ApiError> {
        let sources = self.paths.sources();
        let entries = std::fs::read_dir(&sources)
            .map_err(|error| ApiError::internal(anyhow::anyhow!("reading {}: {error}", sources.display())))?;
        let hashes = entries.filter_map(Result::ok).filter_map(|entry| entry.file_name().into_string().ok()).collect();
        self.remove_unused_sources(hashes).await
    }
}
