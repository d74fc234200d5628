//! The instances of one script and the calls waiting for them. A caller
//! takes a free instance, or waits while one starts (scale from zero); an
//! instance with no call for the idle window is stopped (scale to zero).
//! Instances are picked and removed under one lock, so an instance being
//! stopped for idleness is never handed to a new call.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::budget::{MemoryBudget, MemoryReservation};
use crate::error::{ApiError, ErrorKind};
use crate::metrics::{Metrics, script_labels};
use crate::runtime::{Instance, InstanceSpec, Runtime};

struct Slot {
    instance: Arc<dyn Instance>,
    /// The instance's [`InstanceSpec::pool_key`].
    key: String,
    in_flight: usize,
    last_used: Instant,
    /// Released when the slot is dropped, which is when the instance leaves the pool.
    _memory: MemoryReservation,
}

#[derive(Default)]
struct PoolState {
    slots: Vec<Slot>,
    /// Instances being started.
    starting: usize,
    /// Callers waiting for a free instance.
    waiting: usize,
    /// Counts failed starts, so each waiter can tell whether a start that
    /// failed while it waited was meant for it.
    failed_starts: u64,
    last_start_error: Option<ApiError>,
    /// The pool key new calls use; instances of other keys are stopped once
    /// idle.
    current_key: String,
    /// Set when the script is deleted: instances stop as their calls end.
    closed: bool,
}

pub struct Pool {
    script: String,
    state: Mutex<PoolState>,
    changed: Notify,
    metrics: Arc<Metrics>,
}

/// Limits a pool works within.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub max_instances: usize,
    pub concurrency: usize,
    /// Calls that may wait for a free instance; more get `overloaded`.
    pub max_waiting: usize,
}

/// Seconds a caller that got `overloaded` is asked to wait (Retry-After).
const RETRY_AFTER_SECONDS: u64 = 1;

fn overloaded(message: String) -> ApiError {
    ApiError::new(ErrorKind::Overloaded, message).with("retry_after_seconds", RETRY_AFTER_SECONDS)
}

impl Pool {
    pub fn new(script: &str, metrics: Arc<Metrics>) -> Arc<Pool> {
        Arc::new(Pool { script: script.to_string(), state: Mutex::default(), changed: Notify::new(), metrics })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().expect("pool state poisoned")
    }

    /// Returns an instance of `spec.pool_key()` with a free call slot, starting
    /// one if none is free and the limit allows. Waits until `deadline`.
    pub async fn acquire(
        self: &Arc<Self>,
        runtime: &Arc<dyn Runtime>,
        budget: &Arc<MemoryBudget>,
        spec: &InstanceSpec,
        limits: PoolLimits,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Lease, ApiError> {
        let key = spec.pool_key();
        let mut failures_seen = None;
        let mut counted_as_waiting = false;
        let result = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    break Err(ApiError::not_found(&self.script));
                }
                state.current_key = key.clone();
                state.slots.retain(|slot| slot.instance.is_alive() || slot.in_flight > 0);
                let failures = *failures_seen.get_or_insert(state.failed_starts);
                if state.failed_starts > failures {
                    break Err(state.last_start_error.clone().unwrap_or_else(|| {
                        ApiError::new(ErrorKind::Crashed, "the instance failed to start")
                    }));
                }
                let free = state
                    .slots
                    .iter_mut()
                    .filter(|slot| {
                        slot.key == key && slot.instance.is_alive() && slot.in_flight < limits.concurrency
                    })
                    .min_by_key(|slot| slot.in_flight);
                if let Some(slot) = free {
                    slot.in_flight += 1;
                    let instance = slot.instance.clone();
                    break Ok(Lease { pool: self.clone(), instance });
                }
                if !counted_as_waiting {
                    if state.waiting >= limits.max_waiting {
                        break Err(overloaded(format!(
                            "{} calls are already waiting for an instance of {}",
                            state.waiting, self.script
                        ))
                        .with("max_waiting", limits.max_waiting));
                    }
                    state.waiting += 1;
                    counted_as_waiting = true;
                }
                let running = state.slots.iter().filter(|slot| slot.key == key).count();
                let capacity_coming = state.starting * limits.concurrency;
                if running + state.starting < limits.max_instances && capacity_coming < state.waiting {
                    match budget.try_reserve(spec.limits.memory_bytes) {
                        Some(memory) => {
                            state.starting += 1;
                            self.start_instance(runtime.clone(), spec.clone(), memory);
                        }
                        None if running + state.starting == 0 => {
                            break Err(overloaded(format!(
                                "the server's memory budget of {} MiB is taken by running instances",
                                budget.total_bytes() / (1024 * 1024)
                            )));
                        }
                        // Wait for an instance this pool already has.
                        None => {}
                    }
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break Err(ApiError::new(
                    ErrorKind::Timeout,
                    format!("no instance became free within the call timeout of {} s", timeout.as_secs_f64()),
                )
                .with("timeout_seconds", timeout.as_secs_f64()));
            }
        };
        if counted_as_waiting {
            self.lock().waiting -= 1;
        }
        result
    }

    /// Starts an instance in its own task, so it finishes and serves the
    /// queue even if the caller that asked for it gives up.
    fn start_instance(self: &Arc<Self>, runtime: Arc<dyn Runtime>, spec: InstanceSpec, memory: MemoryReservation) {
        let pool = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = runtime.start(spec.clone()).await;
            let stop_now = {
                let mut state = pool.lock();
                state.starting -= 1;
                match result {
                    Ok(instance) if state.closed => Some(instance),
                    Ok(instance) => {
                        pool.metrics.cold_starts.get_or_create(&script_labels(&pool.script)).inc();
                        tracing::info!(
                            script = %pool.script,
                            instance = instance.id(),
                            start_ms = started.elapsed().as_millis() as u64,
                            "instance started"
                        );
                        state.slots.push(Slot {
                            instance,
                            key: spec.pool_key(),
                            in_flight: 0,
                            last_used: Instant::now(),
                            _memory: memory,
                        });
                        None
                    }
                    Err(error) => {
                        tracing::warn!(script = %pool.script, %error, "instance failed to start");
                        state.failed_starts += 1;
                        state.last_start_error = Some(error);
                        None
                    }
                }
            };
            if let Some(instance) = stop_now {
                instance.stop().await;
            }
            pool.changed.notify_waiters();
        });
    }

    /// Removes instances that have been idle for `idle` and instances of an
    /// old build key with no call, and stops them.
    pub async fn stop_idle(&self, idle: Duration) {
        let stopped: Vec<Arc<dyn Instance>> = {
            let mut state = self.lock();
            let current_key = state.current_key.clone();
            let closed = state.closed;
            let mut stopped = Vec::new();
            state.slots.retain(|slot| {
                let unused = slot.in_flight == 0
                    && (closed || slot.key != current_key || slot.last_used.elapsed() >= idle);
                if unused || (!slot.instance.is_alive() && slot.in_flight == 0) {
                    stopped.push(slot.instance.clone());
                    false
                } else {
                    true
                }
            });
            stopped
        };
        for instance in stopped {
            tracing::info!(script = %self.script, instance = instance.id(), "stopping idle instance");
            instance.stop().await;
        }
    }

    /// Marks the pool closed (its script was deleted) and stops the
    /// instances that have no call; the others stop as their calls end.
    pub async fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_waiters();
        self.stop_idle(Duration::ZERO).await;
    }

    /// Counts the instances, running or starting.
    pub fn instance_count(&self) -> usize {
        let state = self.lock();
        state.slots.len() + state.starting
    }

    /// Counts the calls waiting for a free instance.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn release(&self, instance: &Arc<dyn Instance>) -> Option<Arc<dyn Instance>> {
        let mut state = self.lock();
        let closed = state.closed;
        let position = state.slots.iter().position(|slot| Arc::ptr_eq(&slot.instance, instance))?;
        let slot = &mut state.slots[position];
        slot.in_flight -= 1;
        slot.last_used = Instant::now();
        let remove = !slot.instance.is_alive() || (closed && slot.in_flight == 0);
        let removed = remove.then(|| state.slots.remove(position).instance);
        drop(state);
        self.changed.notify_waiters();
        removed
    }
}

/// A call slot on one instance, given back when dropped.
pub struct Lease {
    pool: Arc<Pool>,
    pub instance: Arc<dyn Instance>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.pool.release(&self.instance) {
            tokio::spawn(async move { instance.stop().await });
        }
    }
}
