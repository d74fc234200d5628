//! Upload: the server's peak resident memory while a script of several GB
//! streams in, against its idle memory just before. The script is generated
//! while it is sent, so no file of that size is written on the client side.

use std::cell::Cell as SharedFlag;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::Method;
use hyper::body::Frame;

use super::ECHO_PY;
use crate::http::Connection;
use crate::plan::{Plan, Tools};
use crate::report::{Cell, Row, Target, Unit, format_value};
use crate::server::{Server, read_memory};
use crate::stats::PerRun;

const SECTION: &str = "5 upload";
/// The design target: a maximum-size upload raises peak memory by at most 64 MB.
const PEAK_RISE_TARGET: f64 = 64.0 * 1024.0 * 1024.0;
/// The size of each chunk the client sends.
const CHUNK_BYTES: usize = 1024 * 1024;
/// How often resident memory is sampled during the upload.
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

pub async fn run(tools: &Tools, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut idle = PerRun::default();
    let mut peak = PerRun::default();
    let mut sampled_peak = PerRun::default();
    let mut seconds = PerRun::default();
    for run in 0..plan.upload_runs {
        eprintln!("upload: run {}/{}, {} bytes", run + 1, plan.upload_runs, plan.upload_bytes);
        // A new server per run, because VmHWM only ever grows. It runs with
        // the default settings, whose script size limit is 4 GiB.
        let server = Server::start(&tools.server, "")?;
        let mut connection = Connection::open(server.address).await?;
        connection.deploy_file("warm-up", "handler.py", ECHO_PY).await?.expect_status(201, "deploying a small script")?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle.push(server.memory()?.resident as f64);

        let uploading = SharedFlag::new(true);
        let started = Instant::now();
        let upload = async {
            let path = "/v1/scripts/large?filename=handler.py";
            let body = StreamBody::new(futures::stream::iter(GeneratedScript::new(plan.upload_bytes))).boxed();
            let response = connection
                .send(Method::PUT, path, Some("application/octet-stream"), Some(plan.upload_bytes), body)
                .await;
            uploading.set(false);
            response
        };
        let sample = async {
            let mut highest = 0;
            while uploading.get() {
                highest = highest.max(read_memory(server.pid()).map(|memory| memory.resident).unwrap_or(0));
                tokio::time::sleep(SAMPLE_PERIOD).await;
            }
            highest
        };
        let (response, highest_sampled) = futures::join!(upload, sample);
        response?.expect_status(201, "uploading the large script")?;
        seconds.push(started.elapsed().as_secs_f64());
        peak.push(server.memory()?.peak_resident as f64);
        sampled_peak.push(highest_sampled as f64);
    }

    let size = format!(
        "{:.2} GB ({})",
        plan.upload_bytes as f64 / 1e9,
        format_value(plan.upload_bytes as f64, Unit::Bytes)
    );
    Ok(vec![
        Row::new(
            SECTION,
            format!("server peak memory (VmHWM) through a {size} upload; baseline idle VmRSS"),
            Cell::values(peak, Unit::Bytes),
            Cell::values(idle.clone(), Unit::Bytes),
        )
        .with_target(Target::AboveBaselineAtMost(PEAK_RISE_TARGET)),
        Row::new(
            SECTION,
            format!("server VmRSS sampled every {SAMPLE_PERIOD:?} during the upload, highest; baseline idle VmRSS"),
            Cell::values(sampled_peak, Unit::Bytes),
            Cell::values(idle, Unit::Bytes),
        ),
        Row::new(SECTION, format!("time to upload and build {size}"), Cell::values(seconds, Unit::Time), Cell::Empty),
    ])
}

/// A valid Python script of an exact size: the echo handler, then comment
/// lines. Every chunk is a slice of one shared buffer.
struct GeneratedScript {
    remaining: u64,
    head: Option<Bytes>,
    filler: Bytes,
}

impl GeneratedScript {
    fn new(size: u64) -> GeneratedScript {
        let line = format!("# filler to make this script large{}\n", " ".repeat(27));
        let filler = line.repeat(CHUNK_BYTES / line.len() + 1);
        GeneratedScript { remaining: size, head: Some(Bytes::from_static(ECHO_PY.as_bytes())), filler: Bytes::from(filler) }
    }
}

impl Iterator for GeneratedScript {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        let source = self.head.take().unwrap_or_else(|| self.filler.clone());
        let length = (source.len() as u64).min(self.remaining) as usize;
        self.remaining -= length as u64;
        Some(Ok(Frame::data(source.slice(..length))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_script_has_exact_size() {
        for size in [1, 10, 5 * 1024 * 1024 + 3] {
            let total: usize = GeneratedScript::new(size)
                .map(|frame| frame.unwrap().into_data().unwrap().len())
                .sum();
            assert_eq!(total as u64, size);
        }
        let first = GeneratedScript::new(1 << 20).next().unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"def handle(data):"));
    }
}
