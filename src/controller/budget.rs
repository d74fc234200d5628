//! The server-wide memory budget. Every running or starting instance has a
//! reservation of its memory limit, so the sum of the limits stays within
//! the budget and a burst cannot start more instances than the host fits.

use std::sync::{Arc, Mutex};

pub struct MemoryBudget {
    total_bytes: u64,
    used_bytes: Mutex<u64>,
}

/// Memory set aside for one instance, given back when dropped.
pub struct MemoryReservation {
    budget: Arc<MemoryBudget>,
    bytes: u64,
}

impl MemoryBudget {
    pub fn new(total_bytes: u64) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget { total_bytes, used_bytes: Mutex::new(0) })
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// Reserves `bytes`, or returns None if the budget does not have them.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<MemoryReservation> {
        let mut used = self.used_bytes.lock().expect("memory budget poisoned");
        if *used + bytes > self.total_bytes {
            return None;
        }
        *used += bytes;
        Some(MemoryReservation { budget: self.clone(), bytes })
    }
}

impl Drop for MemoryReservation {
    fn drop(&mut self) {
        *self.budget.used_bytes.lock().expect("memory budget poisoned") -= self.bytes;
    }
}

/// Computes the default budget: 80 % of the host's memory from
/// /proc/meminfo, so the server and the page cache keep the rest.
pub fn default_budget_bytes() -> u64 {
    let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    // NOTE: without /proc/meminfo the budget falls back to 4 GiB.
    total_kib.map_or(4 << 30, |kib| kib * 1024 / 5 * 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stay_within_the_budget() {
        let budget = MemoryBudget::new(1000);
        let first = budget.try_reserve(600).expect("fits");
        assert!(budget.try_reserve(600).is_none(), "600 + 600 is over 1000");
        let second = budget.try_reserve(400).expect("fits exactly");
        drop(first);
        assert!(budget.try_reserve(600).is_some(), "freed by the drop");
        drop(second);
    }
}
