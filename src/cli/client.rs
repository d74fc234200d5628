//! A blocking HTTP client for the server's API. An error response becomes
//! [`ClientError::Api`], printed with its kind and the details a user needs.

use reqwest::blocking::{Body, RequestBuilder, Response};
use serde_json::Value;

pub struct Client {
    base: String,
    http: reqwest::blocking::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the kubefaas server at {url}: {source}. Start it with `kubefaas serve`, or point --server / KUBEFAAS_URL at it")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("{kind}: {message}")]
    Api { status: u16, kind: String, message: String, body: Value },
    #[error("the server sent an invalid response ({status}): {text}")]
    Invalid { status: u16, text: String },
}

impl Client {
    pub fn new(base: &str) -> Client {
        let http = reqwest::blocking::Client::builder()
            .timeout(None)
            .build()
            .expect("building the HTTP client");
        Client { base: base.trim_end_matches('/').to_string(), http }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path)), path)
    }

    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.delete(self.url(path)), path)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.send(self.http.post(self.url(path)).json(body), path)
    }

    /// Sends an upload and returns the response for reading as it arrives;
    /// an error status is decoded into [`ClientError::Api`].
    pub fn put_streaming(
        &self,
        path: &str,
        content_type: &str,
        headers: &[(&str, String)],
        body: Body,
    ) -> Result<Response, ClientError> {
        let mut request = self.http.put(self.url(path)).header("content-type", content_type);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request
            .body(body)
            .send()
            .map_err(|source| ClientError::Unreachable { url: self.url(path), source })?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(decode(response).expect_err("an error status decodes to an error"))
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn send(&self, request: RequestBuilder, path: &str) -> Result<Value, ClientError> {
        let response = request
            .send()
            .map_err(|source| ClientError::Unreachable { url: self.url(path), source })?;
        decode(response)
    }
}

fn decode(response: Response) -> Result<Value, ClientError> {
    let status = response.status().as_u16();
    let text = response.text().unwrap_or_default();
    let body: Value = serde_json::from_str(&text).map_err(|_| ClientError::Invalid { status, text: text.clone() })?;
    if (200..300).contains(&status) {
        return Ok(body);
    }
    Err(error_from_body(status, &body, text))
}

/// Turns an `{"error": {...}}` body into a [`ClientError`].
pub fn error_from_body(status: u16, body: &Value, text: String) -> ClientError {
    let error = &body["error"];
    match (error["kind"].as_str(), error["message"].as_str()) {
        (Some(kind), Some(message)) => ClientError::Api {
            status,
            kind: kind.to_string(),
            message: message.to_string(),
            body: error.clone(),
        },
        _ => ClientError::Invalid { status, text },
    }
}
