//! Call targets: what a call to a script's current version needs (its
//! instance spec, pool and metric handles), kept in memory so that a warm
//! call reads no database and builds nothing. A target is made by the first
//! call after the server starts or the script is deployed, and is dropped
//! when the script is deployed again or deleted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::calls::CallHistory;
use super::pool::Pool;
use crate::builder::ArtifactManifest;
use crate::runtime::InstanceSpec;

pub struct CallTarget {
    pub spec: InstanceSpec,
    /// The spec's [`InstanceSpec::pool_key`].
    pub pool_key: String,
    pub pool: Arc<Pool>,
    pub history: Arc<CallHistory>,
    /// The artifact's manifest, whose objects each call keeps from expiring.
    pub manifest: ArtifactManifest,
    pub ok_calls: Counter,
    pub call_duration: Histogram,
    use_records: UseRecords,
}

/// Calls record a use of their artifact at most this often.
const USE_RECORD_INTERVAL_MS: u64 = 60 * 60 * 1000;

impl CallTarget {
    pub fn new(
        spec: InstanceSpec,
        pool: Arc<Pool>,
        history: Arc<CallHistory>,
        manifest: ArtifactManifest,
        ok_calls: Counter,
        call_duration: Histogram,
    ) -> CallTarget {
        let pool_key = spec.pool_key();
        CallTarget { spec, pool_key, pool, history, manifest, ok_calls, call_duration, use_records: UseRecords::default() }
    }

    /// Returns true when a call should record a use of the artifact, which
    /// restarts its retention period: at most once an hour.
    pub fn use_due(&self, now_ms: u64) -> bool {
        self.use_records.due(now_ms)
    }
}

/// The time a call last recorded a use of the artifact, in ms since the epoch.
#[derive(Default)]
struct UseRecords {
    last_ms: AtomicU64,
}

impl UseRecords {
    /// Returns true for the first call and then once per interval. Of
    /// concurrent calls, only one gets true.
    fn due(&self, now_ms: u64) -> bool {
        let last = self.last_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= USE_RECORD_INTERVAL_MS
            && self.last_ms.compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[derive(Default)]
pub struct CallTargets {
    state: Mutex<TargetsState>,
}

#[derive(Default)]
struct TargetsState {
    /// Counts changes to scripts, so a target made from data read before a
    /// change is not kept.
    generation: u64,
    by_name: HashMap<String, Arc<CallTarget>>,
}

impl CallTargets {
    pub fn get(&self, name: &str) -> Option<Arc<CallTarget>> {
        self.lock().by_name.get(name).cloned()
    }

    /// Returns the current generation. Read it before reading the script.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Keeps `target` for later calls, unless the script changed since
    /// `generation` was read.
    pub fn insert(&self, name: &str, generation: u64, target: Arc<CallTarget>) {
        let mut state = self.lock();
        if state.generation == generation {
            state.by_name.insert(name.to_string(), target);
        }
    }

    /// Drops every target, as after artifacts were garbage-collected.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.by_name.clear();
    }

    /// Drops the target of a script that was deployed or deleted.
    pub fn forget(&self, name: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.by_name.remove(name);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TargetsState> {
        self.state.lock().expect("call targets poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::{USE_RECORD_INTERVAL_MS, UseRecords};

    #[test]
    fn use_records_once_per_interval() {
        let records = UseRecords::default();
        let start = 1_800_000_000_000;
        assert!(records.due(start), "the first call records");
        assert!(!records.due(start + 1), "a call right after does not");
        assert!(!records.due(start + USE_RECORD_INTERVAL_MS - 1), "nor one just under an interval later");
        assert!(records.due(start + USE_RECORD_INTERVAL_MS), "one interval later, a call records again");
    }
}
