//! Raw HTTP functions: `ANY /v1/http/{name}/{path...}` hands the request to
//! the script and sends back the response it sets.
//!
//! The script gets `payload` = the request body and `http` =
//! `{"method", "path", "query", "headers"}` (header names lowercase, repeated
//! headers joined with ", "). It returns `payload` = the response body and,
//! optionally, `response` = `{"status", "headers"}`; the status defaults to
//! 200 and the Content-Type to application/octet-stream. The request stays
//! out of the response, so a script that returns `data` as it came does not
//! echo the request's headers.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::AppState;
use super::invoke::CALL_ID_HEADER;
use crate::controller::calls::new_call_id;
use crate::controller::validate_name;
use crate::error::{ApiError, ErrorKind};
use crate::runtime::{CallData, CallReply};

pub async fn http_root(
    state: State<AppState>,
    Path(name): Path<String>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(state, name, String::new(), method, query, headers, body).await
}

pub async fn http_path(
    state: State<AppState>,
    Path((name, path)): Path<(String, String)>,
    method: Method,
    query: RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    serve(state, name, path, method, query, headers, body).await
}

async fn serve(
    State(controller): State<AppState>,
    name: String,
    path: String,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let call_id = new_call_id();
    let mut response = match call(&controller, &name, &call_id, path, method, query, &headers, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&call_id) {
        response.headers_mut().insert(CALL_ID_HEADER, value);
    }
    response
}

#[allow(clippy::too_many_arguments)]
async fn call(
    controller: &AppState,
    name: &str,
    call_id: &str,
    path: String,
    method: Method,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    validate_name(name)?;
    let max_payload = controller.config.max_payload_bytes;
    let body = axum::body::to_bytes(body, usize::try_from(max_payload).unwrap_or(usize::MAX))
        .await
        .map_err(|_| {
            ApiError::new(ErrorKind::TooLarge, format!("the request body is larger than the limit of {max_payload} bytes"))
                .with("limit_bytes", max_payload)
        })?;
    let mut request_headers = Map::new();
    for (header_name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match request_headers.get_mut(header_name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                request_headers.insert(header_name.as_str().to_string(), value.into());
            }
        }
    }
    let http = json!({
        "method": method.as_str(),
        "path": format!("/{path}"),
        "query": query.unwrap_or_default(),
        "headers": request_headers,
    });
    let data = CallData {
        payload: Some(body.to_vec()),
        variables: Map::new(),
        meta: Map::new(),
        flow: json!({}),
        http: Some(http),
    };
    let reply = controller.invoke(name, call_id, data).await?;
    response_from(reply)
}

/// Builds the HTTP response the script set. A status or header the script
/// set that HTTP does not allow is the script's error.
fn response_from(reply: CallReply) -> Result<Response, ApiError> {
    let http = reply.response.unwrap_or(Value::Null);
    let status = match &http["status"] {
        Value::Null => StatusCode::OK,
        value => value
            .as_u64()
            .and_then(|code| u16::try_from(code).ok())
            .and_then(|code| StatusCode::from_u16(code).ok())
            .filter(|code| code.as_u16() >= 200)
            .ok_or_else(|| script_error(format!("the script set an invalid HTTP status {value}: use 200 to 599")))?,
    };
    let mut response = Response::new(Body::from(reply.payload.unwrap_or_default()));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Some(headers) = http["headers"].as_object() {
        for (header_name, value) in headers {
            // The server frames the body itself.
            if FRAMING_HEADERS.contains(&header_name.to_ascii_lowercase().as_str()) {
                continue;
            }
            let header_name = HeaderName::from_bytes(header_name.as_bytes())
                .map_err(|_| script_error(format!("the script set an invalid HTTP header name {header_name:?}")))?;
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            let value = HeaderValue::from_str(&text)
                .map_err(|_| script_error(format!("the script set an invalid value for HTTP header {header_name}")))?;
            response_headers.insert(header_name, value);
        }
    }
    Ok(response)
}

/// Headers that describe how the body is framed on the connection; the
/// server sets them, whatever the script returns.
const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"];

fn script_error(message: String) -> ApiError {
    ApiError::new(ErrorKind::ScriptError, message)
}
