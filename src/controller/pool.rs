//! The instances of one script and the calls waiting for them. A caller
//! takes a free instance, or waits while one starts (scale from zero); an
//! instance with no call for the idle window is stopped (scale to zero).
//! Instances are picked and removed under one lock, so an instance being
//! stopped for idleness is never handed to a new call.
//!
//! Waiting callers queue in arrival order. A call slot that is released, or
//! that a newly started instance brings, is handed straight to the oldest
//! queued caller of the same pool key, and a caller that arrives while
//! others of its key are queued joins the back of the queue. So a busy
//! script serves its callers first come, first served, and each release
//! wakes one caller rather than all of them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

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

/// A caller waiting for a call slot, in the pool's queue.
struct QueuedCaller {
    id: u64,
    key: String,
    /// Receives an instance whose call slot is already counted as in use.
    handoff: oneshot::Sender<Arc<dyn Instance>>,
}

#[derive(Default)]
struct PoolState {
    slots: Vec<Slot>,
    /// Instances being started.
    starting: usize,
    /// Callers waiting for a free instance.
    waiting: usize,
    /// The waiting callers, oldest first. Entries of callers that gave up
    /// stay until they are skipped or pruned.
    queue: VecDeque<QueuedCaller>,
    next_caller_id: u64,
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

    /// Returns an instance of `key` (the spec's [`InstanceSpec::pool_key`])
    /// with a free call slot, starting one if none is free and the limit
    /// allows. Waits in the queue until `deadline`.
    #[allow(clippy::too_many_arguments)]
    pub async fn acquire(
        self: &Arc<Self>,
        runtime: &Arc<dyn Runtime>,
        budget: &Arc<MemoryBudget>,
        spec: &InstanceSpec,
        key: &str,
        limits: PoolLimits,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<Lease, ApiError> {
        if let Some(lease) = self.take_free_slot(key, limits.concurrency) {
            return Ok(lease);
        }
        let mut failures_seen = None;
        // Counts this caller in `waiting` until it returns or is dropped.
        let mut waiting: Option<WaitingCount> = None;
        let mut queued: Option<QueuedHandoff> = None;
        let result = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if state.closed {
                    break Err(ApiError::not_found(&self.script));
                }
                state.use_key(key);
                state.slots.retain(|slot| slot.instance.is_alive() || slot.in_flight > 0);
                state.queue.retain(|caller| !caller.handoff.is_closed());
                let failures = *failures_seen.get_or_insert(state.failed_starts);
                if state.failed_starts > failures {
                    break Err(state.last_start_error.clone().unwrap_or_else(|| {
                        ApiError::new(ErrorKind::Crashed, "the instance failed to start")
                    }));
                }
                // A free slot goes to this caller only if no earlier caller
                // of the same key is queued. Handoffs normally serve queued
                // callers, so this matters only for a slot freed without one.
                let own_id = queued.as_ref().map(|handoff| handoff.id);
                let first_in_line = state
                    .queue
                    .iter()
                    .find(|caller| caller.key == key)
                    .is_none_or(|caller| Some(caller.id) == own_id);
                if first_in_line && let Some(instance) = state.take_slot(key, limits.concurrency) {
                    if let Some(id) = own_id {
                        state.queue.retain(|caller| caller.id != id);
                    }
                    break Ok(Lease { pool: self.clone(), instance });
                }
                if waiting.is_none() {
                    if state.waiting >= limits.max_waiting {
                        break Err(overloaded(format!(
                            "{} calls are already waiting for an instance of {}",
                            state.waiting, self.script
                        ))
                        .with("max_waiting", limits.max_waiting));
                    }
                    state.waiting += 1;
                    waiting = Some(WaitingCount { pool: self });
                }
                if queued.is_none() {
                    let (sender, receiver) = oneshot::channel();
                    let id = state.next_caller_id;
                    state.next_caller_id += 1;
                    state.queue.push_back(QueuedCaller { id, key: key.to_string(), handoff: sender });
                    queued = Some(QueuedHandoff { id, receiver, pool: self.clone() });
                }
                let running = state.slots.iter().filter(|slot| slot.key == key).count();
                let capacity_coming = state.starting * limits.concurrency;
                if running + state.starting < limits.max_instances && capacity_coming < state.waiting {
                    match budget.try_reserve(spec.limits.memory_bytes) {
                        Some(memory) => {
                            state.starting += 1;
                            self.start_instance(runtime.clone(), spec.clone(), memory, limits.concurrency);
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
            let handoff = queued.as_mut().expect("a waiting caller is queued");
            tokio::select! {
                biased;
                received = &mut handoff.receiver => match received {
                    Ok(instance) => break Ok(Lease { pool: self.clone(), instance }),
                    // The pool dropped the queue entry, as it does when the
                    // script is deleted. The next pass reports that, or
                    // queues this caller again.
                    Err(_) => queued = None,
                },
                () = notified.as_mut() => {}
                () = tokio::time::sleep_until(deadline) => {
                    break Err(ApiError::new(
                        ErrorKind::Timeout,
                        format!("no instance became free within the call timeout of {} s", timeout.as_secs_f64()),
                    )
                    .with("timeout_seconds", timeout.as_secs_f64()));
                }
            }
        };
        drop(waiting);
        result
    }

    /// Takes a free slot of `key` while no caller of `key` is queued: the
    /// common case of [`Pool::acquire`], without registering for wake-ups.
    fn take_free_slot(self: &Arc<Self>, key: &str, concurrency: usize) -> Option<Lease> {
        let mut state = self.lock();
        if state.closed || state.queue.iter().any(|caller| caller.key == key) {
            return None;
        }
        state.use_key(key);
        let instance = state.take_slot(key, concurrency)?;
        Some(Lease { pool: self.clone(), instance })
    }

    /// Starts an instance in its own task, so it finishes and serves the
    /// queue even if the caller that asked for it gives up. Its `concurrency`
    /// call slots go to the oldest queued callers of its pool key.
    fn start_instance(
        self: &Arc<Self>,
        runtime: Arc<dyn Runtime>,
        spec: InstanceSpec,
        memory: MemoryReservation,
        concurrency: usize,
    ) {
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
                        let key = spec.pool_key();
                        let mut in_flight = 0;
                        while in_flight < concurrency && state.hand_over(&key, &instance) {
                            in_flight += 1;
                        }
                        state.slots.push(Slot {
                            instance,
                            key,
                            in_flight,
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
        {
            let mut state = self.lock();
            state.closed = true;
            state.queue.clear();
        }
        self.changed.notify_waiters();
        self.stop_idle(Duration::ZERO).await;
    }

    /// Returns whether the pool's script was deleted.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
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

    /// Gives a call slot back: hands it to the oldest queued caller of its
    /// pool key, or marks it free. Returns the instance if it must stop.
    fn release(&self, instance: &Arc<dyn Instance>) -> Option<Arc<dyn Instance>> {
        let mut state = self.lock();
        let closed = state.closed;
        let position = state.slots.iter().position(|slot| Arc::ptr_eq(&slot.instance, instance))?;
        state.slots[position].last_used = Instant::now();
        if instance.is_alive() && !closed {
            let key = state.slots[position].key.clone();
            if state.hand_over(&key, instance) {
                return None;
            }
        }
        let slot = &mut state.slots[position];
        slot.in_flight -= 1;
        let remove = !slot.instance.is_alive() || (closed && slot.in_flight == 0);
        let removed = remove.then(|| state.slots.remove(position).instance);
        // Queued callers of another pool key, or callers that may now start
        // an instance in place of a removed one, check the pool again.
        let others_waiting = !state.queue.is_empty();
        drop(state);
        if removed.is_some() || others_waiting {
            self.changed.notify_waiters();
        }
        removed
    }
}

impl PoolState {
    /// Makes `key` the one new calls use. Instances of other keys stop once idle.
    fn use_key(&mut self, key: &str) {
        if self.current_key != key {
            self.current_key = key.to_string();
        }
    }

    /// Takes a call slot of `key` on the least busy live instance that has
    /// one free.
    fn take_slot(&mut self, key: &str, concurrency: usize) -> Option<Arc<dyn Instance>> {
        let slot = self
            .slots
            .iter_mut()
            .filter(|slot| slot.key == key && slot.instance.is_alive() && slot.in_flight < concurrency)
            .min_by_key(|slot| slot.in_flight)?;
        slot.in_flight += 1;
        Some(slot.instance.clone())
    }

    /// Sends `instance` to the oldest queued caller of `key` that is still
    /// waiting, removing the entries it passes. Returns whether a caller took
    /// it; the call slot then stays counted as in use.
    fn hand_over(&mut self, key: &str, instance: &Arc<dyn Instance>) -> bool {
        while let Some(index) = self.queue.iter().position(|caller| caller.key == key) {
            let caller = self.queue.remove(index).expect("the index was just found");
            if caller.handoff.send(instance.clone()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// A caller counted in [`PoolState::waiting`]. Dropping it, also when the
/// caller gives up, takes it off the count.
struct WaitingCount<'a> {
    pool: &'a Pool,
}

impl Drop for WaitingCount<'_> {
    fn drop(&mut self) {
        self.pool.lock().waiting -= 1;
    }
}

/// The receiving end of a queued caller's handoff. If the caller stops
/// waiting after a slot was sent but before it read it, dropping this gives
/// the slot back, so it is never lost.
struct QueuedHandoff {
    id: u64,
    receiver: oneshot::Receiver<Arc<dyn Instance>>,
    pool: Arc<Pool>,
}

impl Drop for QueuedHandoff {
    fn drop(&mut self) {
        self.receiver.close();
        if let Ok(instance) = self.receiver.try_recv() {
            drop(Lease { pool: self.pool.clone(), instance });
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use futures::future::BoxFuture;

    use super::*;
    use crate::metrics::Metrics;
    use crate::runtime::logs::LogBuffer;
    use crate::runtime::{CallData, CallHold, CallReply, ResourceLimits};

    struct FakeInstance {
        id: u64,
        alive: AtomicBool,
    }

    impl Instance for FakeInstance {
        fn id(&self) -> u64 {
            self.id
        }

        fn call<'a>(&'a self, _data: &'a CallData, _hold: CallHold) -> BoxFuture<'a, Result<CallReply, ApiError>> {
            Box::pin(async { Ok(CallReply::default()) })
        }

        fn is_alive(&self) -> bool {
            self.alive.load(Ordering::Acquire)
        }

        fn stop(&self) -> BoxFuture<'_, ()> {
            self.alive.store(false, Ordering::Release);
            Box::pin(async {})
        }
    }

    #[derive(Default)]
    struct FakeRuntime {
        started: AtomicU64,
    }

    impl Runtime for FakeRuntime {
        fn start(&self, _spec: InstanceSpec) -> BoxFuture<'_, Result<Arc<dyn Instance>, ApiError>> {
            let id = self.started.fetch_add(1, Ordering::Relaxed) + 1;
            Box::pin(async move { Ok(Arc::new(FakeInstance { id, alive: AtomicBool::new(true) }) as Arc<dyn Instance>) })
        }
    }

    const ONE_SLOT: PoolLimits = PoolLimits { max_instances: 1, concurrency: 1, max_waiting: 100 };

    fn spec() -> InstanceSpec {
        InstanceSpec {
            script: "fake".into(),
            version: 1,
            build_key: "key-1".into(),
            interpreter: "/bin/false".into(),
            program: None,
            interpreter_paths: Vec::new(),
            args: Vec::new(),
            shim: "/nonexistent/shim".into(),
            env: Default::default(),
            secrets: Default::default(),
            code_dir: "/nonexistent".into(),
            dependencies_dir: "/nonexistent".into(),
            entry: "handler.py".into(),
            concurrency: 1,
            prewarm: None,
            logs: Arc::new(LogBuffer::new(10)),
            start_timeout: Duration::from_secs(5),
            limits: ResourceLimits { memory_bytes: 1024, pids: 10, cpu_weight: 100 },
            network: false,
        }
    }

    fn new_pool() -> Arc<Pool> {
        Pool::new("fake", Arc::new(Metrics::new()))
    }

    async fn acquire(pool: &Arc<Pool>, runtime: &Arc<dyn Runtime>, timeout: Duration) -> Result<Lease, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let budget = MemoryBudget::new(1024 * 1024);
        let spec = spec();
        pool.acquire(runtime, &budget, &spec, &spec.pool_key(), ONE_SLOT, deadline, timeout).await
    }

    async fn wait_for_waiting(pool: &Pool, count: usize) {
        for _ in 0..1000 {
            if pool.lock().waiting == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the pool never had {count} waiting callers");
    }

    #[tokio::test]
    async fn queued_callers_served_in_arrival_order() {
        let pool = new_pool();
        let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime::default());
        let first = acquire(&pool, &runtime, Duration::from_secs(5)).await.unwrap();
        let served = Arc::new(Mutex::new(Vec::new()));

        let mut tasks = Vec::new();
        for caller in 1..=3 {
            let (task_pool, task_runtime, served) = (pool.clone(), runtime.clone(), served.clone());
            tasks.push(tokio::spawn(async move {
                let lease = acquire(&task_pool, &task_runtime, Duration::from_secs(5)).await.unwrap();
                served.lock().unwrap().push(caller);
                drop(lease);
            }));
            wait_for_waiting(&pool, caller).await;
        }

        // The released slot goes to caller 1, so a caller arriving now,
        // while a slot is in use and two are queued, must wait its turn.
        drop(first);
        let latecomer = acquire(&pool, &runtime, Duration::from_secs(5)).await.unwrap();
        served.lock().unwrap().push(4);
        drop(latecomer);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*served.lock().unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(pool.instance_count(), 1);
    }

    #[tokio::test]
    async fn cancelled_waiter_does_not_keep_slot() {
        let pool = new_pool();
        let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime::default());
        let first = acquire(&pool, &runtime, Duration::from_secs(5)).await.unwrap();

        let waiter = {
            let (task_pool, task_runtime) = (pool.clone(), runtime.clone());
            tokio::spawn(async move { acquire(&task_pool, &task_runtime, Duration::from_secs(5)).await.map(drop) })
        };
        wait_for_waiting(&pool, 1).await;
        // The slot is handed to the waiter, which is cancelled before it
        // runs again to take it.
        drop(first);
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());

        let next = acquire(&pool, &runtime, Duration::from_secs(1)).await;
        assert!(next.is_ok(), "the slot came back to the pool");
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_waiting_count() {
        let pool = new_pool();
        let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime::default());
        let first = acquire(&pool, &runtime, Duration::from_secs(5)).await.unwrap();

        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let (task_pool, task_runtime) = (pool.clone(), runtime.clone());
                tokio::spawn(async move { acquire(&task_pool, &task_runtime, Duration::from_secs(5)).await.map(drop) })
            })
            .collect();
        wait_for_waiting(&pool, 2).await;
        for waiter in waiters {
            waiter.abort();
            assert!(waiter.await.unwrap_err().is_cancelled());
        }
        assert_eq!(pool.waiting(), 0, "callers that gave up are not counted as waiting");

        drop(first);
        assert!(acquire(&pool, &runtime, Duration::from_secs(1)).await.is_ok());
    }

    #[tokio::test]
    async fn timed_out_waiter_leaves_queue() {
        let pool = new_pool();
        let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime::default());
        let first = acquire(&pool, &runtime, Duration::from_secs(5)).await.unwrap();

        let error = acquire(&pool, &runtime, Duration::from_millis(20)).await.err().expect("the slot stays in use");
        assert_eq!(error.kind, ErrorKind::Timeout);
        assert_eq!(pool.lock().waiting, 0);

        drop(first);
        assert!(acquire(&pool, &runtime, Duration::from_secs(1)).await.is_ok());
    }
}
