//! Call records: the newest calls of each script with their id, start,
//! duration, outcome and the log lines the script returned, kept in memory
//! and bounded per script.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct CallRecord {
    pub id: String,
    pub started_at_ms: u64,
    pub duration_ms: f64,
    /// `ok`, or the error kind the call ended with.
    pub outcome: String,
    /// The `logs` the script returned, or the error message.
    pub logs: Vec<String>,
}

pub struct CallHistory {
    records: Mutex<VecDeque<CallRecord>>,
    max_records: usize,
}

impl CallHistory {
    pub fn new(max_records: usize) -> CallHistory {
        CallHistory { records: Mutex::new(VecDeque::new()), max_records }
    }

    pub fn push(&self, record: CallRecord) {
        let mut records = self.records.lock().expect("call history poisoned");
        if records.len() == self.max_records {
            records.pop_front();
        }
        records.push_back(record);
    }

    pub fn snapshot(&self) -> Vec<CallRecord> {
        self.records.lock().expect("call history poisoned").iter().cloned().collect()
    }
}

static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// Returns a new call id: the server's start time and a counter, in hex, so
/// ids do not repeat across restarts of one server.
pub fn new_call_id() -> String {
    static SERVER_START_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *SERVER_START_MS.get_or_init(crate::store::now_ms);
    format!("{start:011x}-{:06x}", NEXT_CALL.fetch_add(1, Ordering::Relaxed))
}
