//! Closed-loop load: a fixed number of callers, each sending its next call
//! as soon as the previous one returns, until a fixed number of calls is done.

use std::cell::{Cell, RefCell};
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use serde_json::Value;

use crate::http::Connection;
use crate::instance::{CallTemplate, ConnectionPool};
use crate::stats::Latencies;

/// Something that sends one call and waits for its reply.
pub trait Caller {
    async fn call(&mut self) -> anyhow::Result<()>;
}

/// Runs `calls` calls spread over `callers`, one call in flight per caller,
/// and returns every call's latency with the wall time of the whole run.
/// Fails on the first failed call.
pub async fn run_load<C: Caller>(callers: &mut [C], calls: usize) -> anyhow::Result<Latencies> {
    let remaining = Cell::new(calls);
    let samples = RefCell::new(Vec::with_capacity(calls));
    let started = Instant::now();
    let workers = callers.iter_mut().map(|caller| {
        let (remaining, samples) = (&remaining, &samples);
        async move {
            while remaining.get() > 0 {
                remaining.set(remaining.get() - 1);
                let call_started = Instant::now();
                caller.call().await?;
                samples.borrow_mut().push(call_started.elapsed().as_secs_f64());
            }
            Ok::<(), anyhow::Error>(())
        }
    });
    futures::future::try_join_all(workers).await?;
    Ok(Latencies { seconds: samples.into_inner(), wall: started.elapsed() })
}

/// Invokes a script through the controller over one kept-alive connection.
pub struct HttpCaller {
    pub connection: Connection,
    pub script: String,
    /// The JSON request body, encoded once.
    pub body: Bytes,
    pub expected_payload: String,
}

impl HttpCaller {
    /// Opens `count` connections that all invoke `script` with `call`.
    pub async fn open(
        address: std::net::SocketAddr,
        script: &str,
        call: &CallTemplate,
        count: usize,
    ) -> anyhow::Result<Vec<HttpCaller>> {
        let payload = String::from_utf8(call.payload.clone()).context("the benchmark payload is not UTF-8")?;
        let body = serde_json::to_vec(&serde_json::json!({ "payload": payload, "variables": call.variables }))
            .context("encoding the invoke body")?;
        let mut callers = Vec::with_capacity(count);
        for _ in 0..count {
            callers.push(HttpCaller {
                connection: Connection::open(address).await?,
                script: script.to_string(),
                body: Bytes::from(body.clone()),
                expected_payload: payload.clone(),
            });
        }
        Ok(callers)
    }
}

impl Caller for HttpCaller {
    async fn call(&mut self) -> anyhow::Result<()> {
        let response = self.connection.invoke(&self.script, self.body.clone()).await?;
        let response = response.expect_status(200, "invoking the script")?;
        let reply: Value = response.json()?;
        anyhow::ensure!(reply["payload"] == self.expected_payload.as_str(), "the script returned {reply}");
        Ok(())
    }
}

/// Calls instances directly through a shared pool of connections.
pub struct PoolCaller<'a> {
    pub pool: &'a ConnectionPool,
    pub call: &'a CallTemplate,
}

impl Caller for PoolCaller<'_> {
    async fn call(&mut self) -> anyhow::Result<()> {
        self.pool.call(self.call).await
    }
}
