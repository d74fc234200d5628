//! `POST /v1/scripts/{name}/invoke`: the data object in, the data object out.
//!
//! The body is JSON: `payload` (string or null), `variables` and `meta`
//! (string to string), `flow` (any object). A payload that is not valid
//! UTF-8 travels as `payload_base64` instead of `payload`, in both
//! directions, so any bytes round-trip unchanged.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::AppState;
use crate::controller::calls::new_call_id;
use crate::controller::validate_name;
use crate::error::{ApiError, ErrorKind};
use crate::runtime::CallData;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvokeBody {
    payload: Option<String>,
    payload_base64: Option<String>,
    #[serde(default)]
    variables: Map<String, Value>,
    #[serde(default)]
    meta: Map<String, Value>,
    flow: Option<Value>,
}

/// The response header that carries a call's id.
pub const CALL_ID_HEADER: &str = "kubefaas-call-id";

pub async fn invoke_script(
    State(controller): State<AppState>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let call_id = new_call_id();
    let mut response = invoke_with_id(controller, name, &call_id, body).await.into_response();
    if let Ok(value) = HeaderValue::from_str(&call_id) {
        response.headers_mut().insert(CALL_ID_HEADER, value);
    }
    response
}

async fn invoke_with_id(
    controller: AppState,
    name: String,
    call_id: &str,
    body: Body,
) -> Result<axum::Json<Value>, ApiError> {
    validate_name(&name)?;
    let max_payload = controller.config.max_payload_bytes;
    // Base64 grows a payload by a third; the rest of the object is small.
    let max_body = max_payload.saturating_mul(4) / 3 + 1024 * 1024;
    let bytes = axum::body::to_bytes(body, usize::try_from(max_body).unwrap_or(usize::MAX))
        .await
        .map_err(|_| payload_too_large(max_payload))?;
    let request = parse_body(&bytes)?;
    let payload = match (request.payload, request.payload_base64) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("send either payload or payload_base64, not both")),
        (Some(text), None) => Some(text.into_bytes()),
        (None, Some(encoded)) => Some(
            BASE64
                .decode(encoded.as_bytes())
                .map_err(|error| ApiError::invalid(format!("payload_base64 is not valid base64: {error}")))?,
        ),
        (None, None) => None,
    };
    if payload.as_ref().is_some_and(|payload| payload.len() as u64 > max_payload) {
        return Err(payload_too_large(max_payload));
    }
    check_string_map("variables", &request.variables)?;
    check_string_map("meta", &request.meta)?;
    let flow = request.flow.unwrap_or_else(|| json!({}));
    if !flow.is_object() {
        return Err(ApiError::invalid("flow must be a JSON object"));
    }

    let data = CallData { payload, variables: request.variables, meta: request.meta, flow, http: None };
    let reply = controller.invoke(&name, call_id, data).await?;

    let mut response = Map::new();
    match reply.payload {
        None => {
            response.insert("payload".into(), Value::Null);
        }
        Some(bytes) => match String::from_utf8(bytes) {
            Ok(text) => {
                response.insert("payload".into(), text.into());
            }
            Err(error) => {
                response.insert("payload_base64".into(), BASE64.encode(error.into_bytes()).into());
            }
        },
    }
    response.insert("variables".into(), reply.variables.unwrap_or_default().into());
    response.insert("meta".into(), reply.meta.unwrap_or_default().into());
    response.insert("flow".into(), reply.flow.unwrap_or_else(|| json!({})));
    response.insert("logs".into(), reply.logs.into());
    Ok(axum::Json(Value::Object(response)))
}

fn parse_body(bytes: &[u8]) -> Result<InvokeBody, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(InvokeBody::default());
    }
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::invalid(format!(
            "the request body is not a valid data object: {error}; send JSON such as {{\"payload\": \"...\", \"variables\": {{}}}}"
        ))
    })
}

fn check_string_map(field: &str, map: &Map<String, Value>) -> Result<(), ApiError> {
    match map.iter().find(|(_, value)| !value.is_string()) {
        Some((key, _)) => Err(ApiError::invalid(format!("{field}.{key} must be a string"))),
        None => Ok(()),
    }
}

fn payload_too_large(max_payload: u64) -> ApiError {
    ApiError::new(ErrorKind::TooLarge, format!("the payload is larger than the limit of {max_payload} bytes"))
        .with("limit_bytes", max_payload)
}
