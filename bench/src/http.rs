//! A lean HTTP/1.1 client: one kept-alive connection per caller, built
//! directly on hyper's connection API so the client adds as little as
//! possible to the latencies it measures.

use std::convert::Infallible;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub type RequestBody = BoxBody<Bytes, Infallible>;

pub struct Connection {
    sender: SendRequest<RequestBody>,
    host: String,
}

pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("the response is not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Fails with the status and body unless the status is `expected`.
    pub fn expect_status(self, expected: u16, what: &str) -> anyhow::Result<Response> {
        if self.status != expected {
            bail!("{what} returned HTTP {} instead of {expected}: {}", self.status, String::from_utf8_lossy(&self.body));
        }
        Ok(self)
    }
}

pub fn full_body(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into()).boxed()
}

impl Connection {
    pub async fn open(address: SocketAddr) -> anyhow::Result<Connection> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_nodelay(true).context("setting TCP_NODELAY")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("starting HTTP/1.1 with {address}"))?;
        // The connection task ends when the sender is dropped or the server
        // closes the connection.
        tokio::spawn(connection);
        Ok(Connection { sender, host: address.to_string() })
    }

    /// Sends a request and reads the whole response. `content_length` is
    /// needed only for a streamed body, which has no size of its own.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        content_length: Option<u64>,
        body: RequestBody,
    ) -> anyhow::Result<Response> {
        let mut request = Request::builder().method(method.clone()).uri(path).header(header::HOST, &self.host);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(length) = content_length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let request = request.body(body).with_context(|| format!("building the request {method} {path}"))?;
        self.sender.ready().await.with_context(|| format!("{method} {path}: the connection closed"))?;
        let response =
            self.sender.send_request(request).await.with_context(|| format!("{method} {path} failed"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .with_context(|| format!("{method} {path}: reading the response body failed"))?
            .to_bytes();
        Ok(Response { status, body })
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Response> {
        self.send(Method::GET, path, None, None, full_body(Bytes::new())).await
    }

    /// Invokes a script with a prepared JSON request body.
    pub async fn invoke(&mut self, name: &str, body: Bytes) -> anyhow::Result<Response> {
        let path = format!("/v1/scripts/{name}/invoke");
        self.send(Method::POST, &path, Some("application/json"), None, full_body(body)).await
    }

    /// Uploads one file as script `name`; returns the response, whatever its status.
    pub async fn deploy_file(&mut self, name: &str, file_name: &str, contents: impl Into<Bytes>) -> anyhow::Result<Response> {
        let path = format!("/v1/scripts/{name}?filename={file_name}");
        self.send(Method::PUT, &path, Some("application/octet-stream"), None, full_body(contents)).await
    }

    /// Uploads files as a tar archive, as `kubefaas deploy FOLDER` does.
    pub async fn deploy_folder(&mut self, name: &str, files: &[(&str, &[u8])]) -> anyhow::Result<Response> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, contents) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(contents.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, path, *contents).with_context(|| format!("adding {path} to the archive"))?;
        }
        let archive = builder.into_inner().context("finishing the archive")?;
        let path = format!("/v1/scripts/{name}");
        self.send(Method::PUT, &path, Some("application/x-tar"), None, full_body(archive)).await
    }

    /// Returns the number of instances a script has, running or starting.
    pub async fn instances(&mut self, name: &str) -> anyhow::Result<u64> {
        let response = self.get(&format!("/v1/scripts/{name}")).await?.expect_status(200, "showing the script")?;
        response.json()?["instances"].as_u64().context("the script has no instances count")
    }
}
